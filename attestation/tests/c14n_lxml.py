"""Canonical XML by libxml2 (lxml), the independent reference for
attestation/src/xml.rs. For each file: SHA-256 of the whole document's
canonical form, of the document without its ds:Signature (enveloped-signature
transform: the element goes, the text after it stays), and of the
ds:SignedInfo subtree ("-" where there is none)."""
import hashlib
import sys

from lxml import etree

DS = "{http://www.w3.org/2000/09/xmldsig#}"


def c14n(node):
    return etree.tostring(node, method="c14n", exclusive=False, with_comments=False)


for path in sys.argv[1:]:
    parser = etree.XMLParser(resolve_entities=False, remove_blank_text=False)
    tree = etree.parse(path, parser)
    root = tree.getroot()
    whole = hashlib.sha256(c14n(tree)).hexdigest()
    sig = root.find(DS + "Signature")
    info = "-"
    without = whole
    if sig is not None:
        signed_info = sig.find(DS + "SignedInfo")
        if signed_info is not None:
            info = hashlib.sha256(c14n(signed_info)).hexdigest()
        tail = sig.tail or ""
        previous = sig.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            root.text = (root.text or "") + tail
        root.remove(sig)
        without = hashlib.sha256(c14n(tree)).hexdigest()
    print(whole, without, info)
