//! A bounded XML reader and Canonical XML 1.1 (W3C, 2008), for verifying
//! the XML signatures on NVIDIA's reference integrity manifests (`rim`).
//!
//! Why our own tree: canonical XML must reproduce each name's prefix as
//! written (NVIDIA's RIMs bind the default namespace and `ns0` to the same
//! URI and use both), and tree crates that resolve namespaces drop the
//! prefix. The tokens come from `quick-xml`; this module adds namespace
//! resolution, the well-formedness checks a signature verifier needs
//! (one root, bound prefixes, no duplicate expanded attribute names, no DTD),
//! limits on size, depth and counts, and the canonical serialisation.
//! The signature is checked over exactly the tree the caller then reads, so
//! there is no second parser to disagree with.
//!
//! Supported: the inclusive algorithm without comments, on a whole document
//! with one element subtree left out (the enveloped-signature transform), or
//! on one element subtree (`SignedInfo`). Refused: DTDs (entities could make
//! the signed and the read content differ), `xml:base` (C14N 1.1 fixes it up;
//! no RIM uses it), encodings other than UTF-8.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};

/// Largest document accepted (NVIDIA's RIMs are about 20 KiB).
pub const MAX_DOCUMENT: usize = 1 << 20;
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 50_000;
const MAX_ATTRIBUTES: usize = 64;
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("XML at byte {offset}: {reason}")]
pub struct XmlError {
    pub offset: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The name as written (`ns2:Hash0`).
    pub qname: String,
    /// Namespace URI; unprefixed attributes have none.
    pub namespace: Option<String>,
    pub local: String,
    /// The normalised value (references resolved, whitespace characters as spaces).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
    /// A processing instruction: target and data.
    Pi(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub qname: String,
    pub namespace: Option<String>,
    pub local: String,
    pub attributes: Vec<Attribute>,
    /// Namespace declarations made on this element: (prefix, URI), `""` for the default.
    pub declarations: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// Child elements with this namespace and local name.
    pub fn children_named<'a>(&'a self, namespace: &'a str, local: &'a str) -> impl Iterator<Item = &'a Element> {
        self.elements().filter(move |e| e.namespace.as_deref() == Some(namespace) && e.local == local)
    }

    pub fn attribute(&self, namespace: Option<&str>, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.namespace.as_deref() == namespace && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// The concatenated text children.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|c| match c {
                Node::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Processing instructions before and after the root element.
    pub before: Vec<Node>,
    pub root: Element,
    pub after: Vec<Node>,
}

/// In-scope namespaces: prefix (`""` for the default) to URI.
type Scope = BTreeMap<String, String>;

struct Parser<'a> {
    reader: quick_xml::Reader<&'a [u8]>,
    nodes: usize,
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> XmlError {
        XmlError { offset: self.reader.buffer_position(), reason: reason.into() }
    }

    fn count(&mut self) -> Result<(), XmlError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.err(format!("more than {MAX_NODES} nodes")));
        }
        Ok(())
    }

    /// Reads an element whose start tag is `start`, with its content unless `empty`.
    fn element(&mut self, start: &BytesStart, empty: bool, parent: &Scope, depth: usize) -> Result<Element, XmlError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("elements nested deeper than {MAX_DEPTH}")));
        }
        self.count()?;
        let qname = start.name().as_ref().to_string();
        let mut scope = parent.clone();
        let mut declarations = Vec::new();
        let mut raw_attributes = Vec::new();
        for a in start.attributes().with_checks(true) {
            let a = a.map_err(|e| self.err(format!("attribute: {e}")))?;
            let name = a.key.as_ref().to_string();
            let value = attribute_value(&a.value).map_err(|r| self.err(r))?;
            if name == "xmlns" || name.starts_with("xmlns:") {
                let prefix = name.strip_prefix("xmlns:").unwrap_or("").to_string();
                if prefix == "xml" || prefix == "xmlns" || value == XML_NS {
                    return Err(self.err(format!("{name}: the xml and xmlns prefixes cannot be declared")));
                }
                if !prefix.is_empty() && value.is_empty() {
                    return Err(self.err(format!("{name}: a prefix cannot be bound to the empty namespace")));
                }
                if value.is_empty() {
                    scope.remove("");
                } else {
                    scope.insert(prefix.clone(), value.clone());
                }
                declarations.push((prefix, value));
            } else {
                raw_attributes.push((name, value));
            }
            if raw_attributes.len() + declarations.len() > MAX_ATTRIBUTES {
                return Err(self.err(format!("more than {MAX_ATTRIBUTES} attributes on <{qname}>")));
            }
        }
        let (namespace, local) = resolve(&qname, &scope, true).map_err(|r| self.err(r))?;
        let mut attributes: Vec<Attribute> = Vec::with_capacity(raw_attributes.len());
        for (qname, value) in raw_attributes {
            let (namespace, local) = resolve(&qname, &scope, false).map_err(|r| self.err(r))?;
            if namespace.as_deref() == Some(XML_NS) && local == "base" {
                return Err(self.err("xml:base is not supported"));
            }
            if attributes.iter().any(|a| a.namespace == namespace && a.local == local) {
                return Err(self.err(format!("<{qname}> has two attributes with the expanded name of {qname}")));
            }
            self.count()?;
            attributes.push(Attribute { qname, namespace, local, value });
        }
        let mut element = Element { qname, namespace, local, attributes, declarations, children: Vec::new() };
        if empty {
            return Ok(element);
        }
        let mut text = String::new();
        loop {
            let event = self.reader.read_event().map_err(|e| self.err(e.to_string()))?;
            if !matches!(event, Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)) && !text.is_empty() {
                self.count()?;
                element.children.push(Node::Text(std::mem::take(&mut text)));
            }
            match event {
                Event::Start(s) => {
                    let child = self.element(&s, false, &scope, depth + 1)?;
                    element.children.push(Node::Element(child));
                }
                Event::Empty(s) => {
                    let child = self.element(&s, true, &scope, depth + 1)?;
                    element.children.push(Node::Element(child));
                }
                Event::End(_) => return Ok(element),
                Event::Text(t) => text.push_str(&t.xml10_content()),
                Event::CData(c) => text.push_str(&c),
                Event::GeneralRef(r) => text.push(reference(&r).map_err(|r| self.err(r))?),
                Event::Comment(_) => {}
                Event::PI(pi) => {
                    self.count()?;
                    element.children.push(Node::Pi(pi.target().to_string(), pi.content().trim_start().to_string()));
                }
                Event::Decl(_) => return Err(self.err("an XML declaration inside an element")),
                Event::DocType(_) => return Err(self.err("a document type declaration is not accepted")),
                Event::Eof => return Err(self.err(format!("the document ends inside <{}>", element.qname))),
            }
        }
    }
}

/// An entity or character reference: the five predefined entities and
/// character references to XML characters; anything else is undeclared.
fn reference(name: &str) -> Result<char, String> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let number = name.strip_prefix('#').ok_or_else(|| format!("undeclared entity &{name};"))?;
            let code = match number.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => number.parse::<u32>(),
            }
            .map_err(|_| format!("bad character reference &{name};"))?;
            char::from_u32(code)
                .filter(|c| is_xml_char(*c))
                .ok_or_else(|| format!("&{name}; is not an XML character"))?
        }
    };
    Ok(c)
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// XML 1.0 attribute-value normalisation for CDATA attributes (there is no
/// DTD): literal whitespace characters become spaces, then references are
/// resolved (a reference to a newline stays a newline).
fn attribute_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '<', '\t', '\n', '\r']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        match c {
            b'<' => return Err("'<' in an attribute value".into()),
            b'&' => {
                let end = rest[i..].find(';').ok_or("an unterminated reference in an attribute value")?;
                out.push(reference(&rest[i + 1..i + end])?);
                rest = &rest[i + end + 1..];
                continue;
            }
            _ => out.push(' '),
        }
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits `qname` and resolves its prefix in `scope`. Unprefixed attributes
/// have no namespace; unprefixed elements take the default one.
fn resolve(qname: &str, scope: &Scope, element: bool) -> Result<(Option<String>, String), String> {
    match qname.split_once(':') {
        Some((prefix, local)) => {
            if prefix.is_empty() || local.is_empty() || local.contains(':') {
                return Err(format!("{qname:?} is not a qualified name"));
            }
            if prefix == "xml" {
                return Ok((Some(XML_NS.into()), local.into()));
            }
            let uri = scope.get(prefix).ok_or_else(|| format!("prefix {prefix:?} of {qname} is not declared"))?;
            Ok((Some(uri.clone()), local.into()))
        }
        None if element => Ok((scope.get("").cloned(), qname.into())),
        None => Ok((None, qname.into())),
    }
}

/// Parses a UTF-8 document, without its comments.
pub fn parse(input: &[u8]) -> Result<Document, XmlError> {
    let fail = |reason: &str| XmlError { offset: 0, reason: reason.into() };
    if input.len() > MAX_DOCUMENT {
        return Err(fail(&format!("{} bytes; the limit is {MAX_DOCUMENT}", input.len())));
    }
    let text = std::str::from_utf8(input).map_err(|e| XmlError {
        offset: e.valid_up_to() as u64,
        reason: "not UTF-8 (the only encoding accepted)".into(),
    })?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    // XML line-end normalisation comes before parsing.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    if let Some(bad) = text.chars().find(|c| !is_xml_char(*c)) {
        return Err(fail(&format!("character U+{:04X} is not allowed in XML", bad as u32)));
    }
    let mut parser = Parser { reader: quick_xml::Reader::from_reader(text.as_bytes()), nodes: 0 };
    let config = parser.reader.config_mut();
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.check_comments = true;
    config.expand_empty_elements = false;
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut root = None;
    loop {
        let event = parser.reader.read_event().map_err(|e| parser.err(e.to_string()))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => return Err(parser.err("a second root element")),
            Event::Start(s) => root = Some(parser.element(&s, false, &Scope::new(), 0)?),
            Event::Empty(s) => root = Some(parser.element(&s, true, &Scope::new(), 0)?),
            Event::Text(t) if t.bytes().all(|b| b.is_ascii_whitespace()) => {}
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                return Err(parser.err("text outside the root element"));
            }
            Event::Comment(_) => {}
            Event::PI(pi) => {
                let node = Node::Pi(pi.target().to_string(), pi.content().trim_start().to_string());
                if root.is_some() { &mut after } else { &mut before }.push(node);
            }
            Event::Decl(d) => {
                if root.is_some() || !before.is_empty() {
                    return Err(parser.err("an XML declaration after the start"));
                }
                if let Some(Ok(enc)) = d.encoding()
                    && !enc.eq_ignore_ascii_case("utf-8")
                {
                    return Err(parser.err(format!("encoding {:?}; only UTF-8 is accepted", enc)));
                }
            }
            Event::DocType(_) => return Err(parser.err("a document type declaration is not accepted")),
            Event::End(_) => return Err(parser.err("an end tag without a start")),
            Event::Eof => break,
        }
    }
    let root = root.ok_or_else(|| fail("no root element"))?;
    Ok(Document { before, root, after })
}

/// What to canonicalise: the path is child-element positions from the root.
pub enum Subset<'a> {
    /// The whole document.
    Document,
    /// The whole document but the element at this path (enveloped signature).
    DocumentWithout(&'a [usize]),
    /// The element at this path and its descendants.
    Subtree(&'a [usize]),
}

/// Canonical XML 1.1 without comments.
pub fn canonicalize(doc: &Document, subset: Subset) -> Result<Vec<u8>, String> {
    let mut out = String::new();
    match subset {
        Subset::Document => return canonicalize(doc, Subset::DocumentWithout(&[usize::MAX])),
        Subset::DocumentWithout(path) => {
            for pi in &doc.before {
                write_node(pi, &Scope::new(), &Scope::new(), None, &mut out);
                out.push('\n');
            }
            write_element(&doc.root, &Scope::new(), &Scope::new(), &[], Some(path), &mut out);
            for pi in &doc.after {
                out.push('\n');
                write_node(pi, &Scope::new(), &Scope::new(), None, &mut out);
            }
        }
        Subset::Subtree(path) => {
            // Walk down to the apex, gathering the namespaces and the
            // inheritable xml: attributes (xml:lang, xml:space) in scope.
            let mut scope = Scope::new();
            let mut inherited: BTreeMap<String, Attribute> = BTreeMap::new();
            let mut element = &doc.root;
            for (depth, &i) in path.iter().enumerate() {
                apply(element, &mut scope);
                for a in &element.attributes {
                    if a.namespace.as_deref() == Some(XML_NS) && (a.local == "lang" || a.local == "space") {
                        inherited.insert(a.local.clone(), a.clone());
                    }
                }
                element = element
                    .elements()
                    .nth(i)
                    .ok_or_else(|| format!("no element at position {i} at depth {}", depth + 1))?;
            }
            let mut apex = element.clone();
            for (local, a) in inherited {
                if apex.attribute(Some(XML_NS), &local).is_none() {
                    apex.attributes.push(a);
                }
            }
            write_element(&apex, &scope, &Scope::new(), &[], None, &mut out);
        }
    }
    Ok(out.into_bytes())
}

fn apply(element: &Element, scope: &mut Scope) {
    for (prefix, uri) in &element.declarations {
        if uri.is_empty() {
            scope.remove(prefix);
        } else {
            scope.insert(prefix.clone(), uri.clone());
        }
    }
}

/// Writes `element` whose parent has namespaces `parent_scope` in scope and
/// whose nearest written ancestor rendered `rendered`.
fn write_element(
    element: &Element,
    parent_scope: &Scope,
    rendered: &Scope,
    path: &[usize],
    skip: Option<&[usize]>,
    out: &mut String,
) {
    if skip == Some(path) {
        return;
    }
    let mut scope = parent_scope.clone();
    apply(element, &mut scope);
    out.push('<');
    out.push_str(&element.qname);
    // Namespace nodes that differ from what the nearest written ancestor
    // rendered, by prefix (the default first); then attributes by
    // (namespace URI, local name), unqualified ones first.
    if rendered.get("").is_some_and(|u| !u.is_empty()) && !scope.contains_key("") {
        out.push_str(" xmlns=\"\"");
    }
    for (prefix, uri) in &scope {
        if rendered.get(prefix) != Some(uri) {
            if prefix.is_empty() {
                out.push_str(" xmlns=\"");
            } else {
                out.push_str(" xmlns:");
                out.push_str(prefix);
                out.push_str("=\"");
            }
            escape_attribute(uri, out);
            out.push('"');
        }
    }
    let mut attributes: Vec<&Attribute> = element.attributes.iter().collect();
    attributes.sort_by(|a, b| {
        (a.namespace.as_deref().unwrap_or(""), a.local.as_str())
            .cmp(&(b.namespace.as_deref().unwrap_or(""), b.local.as_str()))
    });
    for a in attributes {
        out.push(' ');
        out.push_str(&a.qname);
        out.push_str("=\"");
        escape_attribute(&a.value, out);
        out.push('"');
    }
    out.push('>');
    let mut child_path = path.to_vec();
    let mut position = 0;
    for child in &element.children {
        match child {
            Node::Element(e) => {
                child_path.push(position);
                write_element(e, &scope, &scope, &child_path, skip, out);
                child_path.pop();
                position += 1;
            }
            other => write_node(other, &scope, &scope, skip, out),
        }
    }
    out.push_str("</");
    out.push_str(&element.qname);
    out.push('>');
}

fn write_node(node: &Node, scope: &Scope, rendered: &Scope, skip: Option<&[usize]>, out: &mut String) {
    match node {
        Node::Element(e) => write_element(e, scope, rendered, &[], skip, out),
        Node::Text(t) => {
            for c in t.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '\r' => out.push_str("&#xD;"),
                    c => out.push(c),
                }
            }
        }
        Node::Pi(target, data) => {
            out.push_str("<?");
            out.push_str(target);
            if !data.is_empty() {
                out.push(' ');
                out.push_str(data);
            }
            out.push_str("?>");
        }
    }
}

fn escape_attribute(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(xml: &str) -> String {
        String::from_utf8(canonicalize(&parse(xml.as_bytes()).unwrap(), Subset::Document).unwrap()).unwrap()
    }

    #[test]
    fn canonical_form_of_the_w3c_examples() {
        // Canonical XML 1.0/1.1, section 3.2 (whitespace) and 3.3 (start and end tags).
        assert_eq!(
            c14n(
                "<?xml version=\"1.0\"?>\r\n<doc>\r\n   <e1   />\r\n   <e2   ></e2>\r\n   <e3   name = \"elem3\"   id=\"elem3\"   />\r\n</doc>"
            ),
            "<doc>\n   <e1></e1>\n   <e2></e2>\n   <e3 id=\"elem3\" name=\"elem3\"></e3>\n</doc>"
        );
        assert_eq!(
            c14n(
                "<doc xmlns:b=\"http://www.ietf.org\" xmlns:a=\"http://www.w3.org\" xmlns=\"http://example.org\">\
                 <e5 a:attr=\"out\" b:attr=\"sorted\" attr2=\"all\" attr=\"I'm\" xmlns:b=\"http://www.ietf.org\" \
                 xmlns:a=\"http://www.w3.org\" xmlns=\"http://example.org\"/><e6 xmlns=\"\" xmlns:a=\"http://www.w3.org\">\
                 <e7 xmlns=\"http://www.ietf.org\"><e8 xmlns=\"\" xmlns:a=\"http://www.w3.org\"><e9 xmlns=\"\" \
                 xmlns:a=\"http://www.ietf.org\"/></e8></e7></e6></doc>"
            ),
            "<doc xmlns=\"http://example.org\" xmlns:a=\"http://www.w3.org\" xmlns:b=\"http://www.ietf.org\">\
             <e5 attr=\"I'm\" attr2=\"all\" b:attr=\"sorted\" a:attr=\"out\"></e5><e6 xmlns=\"\">\
             <e7 xmlns=\"http://www.ietf.org\"><e8 xmlns=\"\"><e9 xmlns:a=\"http://www.ietf.org\"></e9></e8></e7></e6></doc>"
        );
        // Section 3.4: character modifications and references.
        assert_eq!(
            c14n(
                "<doc><text>First line&#x0d;&#10;Second line</text><value>&#x32;</value>\
                 <compute><![CDATA[value>\"0\" && value<\"10\" ?\"valid\":\"error\"]]></compute>\
                 <norm attr=' &apos;   &#x20;&#13;&#xa;&#9;   &apos; '/><normNames attr='   A   &#x20;&#13;&#xa;&#9;   B   '/></doc>"
            ),
            "<doc><text>First line&#xD;\nSecond line</text><value>2</value>\
             <compute>value&gt;\"0\" &amp;&amp; value&lt;\"10\" ?\"valid\":\"error\"</compute>\
             <norm attr=\" '    &#xD;&#xA;&#x9;   ' \"></norm><normNames attr=\"   A    &#xD;&#xA;&#x9;   B   \"></normNames></doc>"
        );
    }

    #[test]
    fn a_subtree_carries_the_namespaces_and_xml_attributes_in_scope() {
        let doc =
            parse(b"<r xmlns=\"urn:a\" xmlns:p=\"urn:p\" xml:lang=\"en\"><!-- c --><s><t p:x=\"1\"><u/></t></s></r>")
                .unwrap();
        let t = String::from_utf8(canonicalize(&doc, Subset::Subtree(&[0, 0])).unwrap()).unwrap();
        // By namespace URI: http://www.w3.org/XML/1998/namespace sorts before urn:p.
        assert_eq!(t, "<t xmlns=\"urn:a\" xmlns:p=\"urn:p\" xml:lang=\"en\" p:x=\"1\"><u></u></t>");
        let without = String::from_utf8(canonicalize(&doc, Subset::DocumentWithout(&[0, 0])).unwrap()).unwrap();
        assert_eq!(without, "<r xmlns=\"urn:a\" xmlns:p=\"urn:p\" xml:lang=\"en\"><s></s></r>");
    }

    #[test]
    fn refuses_what_could_make_signed_and_read_content_differ() {
        for (xml, why) in [
            (&b"<!DOCTYPE r [<!ENTITY e \"x\">]><r>&e;</r>"[..], "document type"),
            (b"<r>&e;</r>", "undeclared entity"),
            (b"<r><a></b></r>", "b"),
            (b"<r/><r/>", "second root"),
            (b"<r>", "ends inside"),
            (b"x<r/>", "text outside"),
            (b"<r a=\"1\" a=\"2\"/>", "attribute"),
            (b"<r xmlns:p=\"urn:x\" xmlns:q=\"urn:x\" p:a=\"1\" q:a=\"2\"/>", "two attributes"),
            (b"<p:r/>", "not declared"),
            (b"<r xml:base=\"http://x/\"/>", "xml:base"),
            (b"<r>&#0;</r>", "not an XML character"),
            (b"<r>\x01</r>", "not allowed"),
            (b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r/>", "only UTF-8"),
            (b"<r a=\"&#x110000;\"/>", "not an XML character"),
            (b"", "no root"),
        ] {
            let e = parse(xml).unwrap_err().to_string();
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(xml));
        }
        assert!(parse(&b"<a>".repeat(40)).unwrap_err().to_string().contains("deeper"));
        assert!(parse(&vec![b' '; MAX_DOCUMENT + 1]).unwrap_err().to_string().contains("limit"));
    }
}
