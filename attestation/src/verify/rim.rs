//! NVIDIA reference integrity manifests (RIMs): the signed SWID tags that
//! list the golden measurements of a GPU driver or VBIOS release. Read
//! offline by `cocoon measure-gpu`, which turns each into GPU reference
//! values (`gpu_reference`); verifiers compare reports against those and
//! never parse XML on the request path.
//!
//! The signature is checked in the one profile NVIDIA uses, and anything
//! else is refused: an enveloped XML signature, Canonical XML 1.1, a
//! SHA-384 digest over the whole document, ECDSA P-384/SHA-384 over
//! `SignedInfo`, and the signer's chain in `KeyInfo`, leaf first, ending at
//! the pinned NVIDIA CoRIM signing root, every certificate valid at the
//! verification time.

use std::collections::BTreeMap;

use base64::Engine;
use p384::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256, Sha384};

use crate::gpu_cert::{parse_cert, public_key};
use crate::gpu_reference::{GpuComponent, GpuReferenceValues, RimSource};
use crate::nvidia::verify_chain;
use crate::xml::{self, Element, Subset};

/// NVIDIA CoRIM signing Root CA (DER), the root of every RIM signer's chain.
pub const NVIDIA_RIM_ROOT_CA: &[u8] = include_bytes!("../../roots/nvidia-rim-root-ca.der");
/// SHA-256 of [`NVIDIA_RIM_ROOT_CA`], recorded separately so a changed file is caught.
pub const NVIDIA_RIM_ROOT_CA_SHA256: &str = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1";

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
const MAX_RESOURCES: usize = 256;
const MAX_ALTERNATIVES: usize = 16;
const MAX_CHAIN: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RimError {
    #[error(transparent)]
    Xml(#[from] xml::XmlError),
    #[error("RIM signature: {0}")]
    Profile(String),
    #[error("RIM content: {0}")]
    Content(String),
    #[error("RIM digest: the signature covers a document with SHA-384 {expected}, this one has {found}")]
    Digest { expected: String, found: String },
    #[error("RIM signature does not verify under the key of {0}")]
    Signature(String),
    #[error("RIM signer's certificate chain: {0}")]
    Chain(String),
}

/// A verified RIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rim {
    pub component: GpuComponent,
    /// `colloquialVersion`: the driver (`545.00`) or VBIOS (`96.00.5E.00.01`) version.
    pub version: String,
    /// The chip (`GH100`).
    pub product: String,
    pub tag_id: String,
    /// Active measurements: RIM index (0-based; SPDM block index − 1) to the
    /// acceptable SHA-384 values.
    pub measurements: BTreeMap<u8, Vec<[u8; 48]>>,
    /// Common name of the signing certificate, and its validity window (Unix seconds).
    pub signer: String,
    pub signer_valid: (u64, u64),
}

impl Rim {
    /// The reference values a verifier compares reports against.
    pub fn reference_values(&self, file: &[u8], name: Option<String>, verified_at: u64) -> GpuReferenceValues {
        GpuReferenceValues {
            format: Some(crate::gpu_reference::FORMAT.into()),
            name,
            component: self.component,
            version: self.version.clone(),
            product: self.product.clone(),
            measurements: self
                .measurements
                .iter()
                .map(|(i, alternatives)| (*i, alternatives.iter().map(hex::encode).collect()))
                .collect(),
            source: Some(RimSource {
                tag_id: self.tag_id.clone(),
                sha256: hex::encode(Sha256::digest(file)),
                signer: self.signer.clone(),
                signer_not_after: crate::rfc3339(self.signer_valid.1),
                verified_at: crate::rfc3339(verified_at),
            }),
        }
    }
}

/// The one child element `ds:{local}` of `parent`, or a profile error.
fn one<'a>(parent: &'a Element, local: &'a str) -> Result<&'a Element, RimError> {
    single(parent, DSIG, local).map_err(|e| RimError::Profile(format!("<{}> has {e} ds:{local}", parent.qname)))
}

/// The one child element `{namespace}local` of `parent`; else "no" or "more than one".
fn single<'a>(parent: &'a Element, namespace: &'a str, local: &'a str) -> Result<&'a Element, &'static str> {
    let mut found = parent.children_named(namespace, local);
    match (found.next(), found.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err("no"),
        (Some(_), Some(_)) => Err("more than one"),
    }
}

fn algorithm<'a>(parent: &'a Element, local: &'a str, expected: &str) -> Result<&'a Element, RimError> {
    let e = one(parent, local)?;
    match e.attribute(None, "Algorithm") {
        Some(a) if a == expected => Ok(e),
        found => Err(RimError::Profile(format!("ds:{local}: expected {expected}, found {found:?}"))),
    }
}

fn base64_text(e: &Element, what: &str) -> Result<Vec<u8>, RimError> {
    let text: String = e.text().chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|err| RimError::Profile(format!("{what} is not base64: {err}")))
}

/// Verifies a RIM's signature and chain at `at` (Unix seconds) and reads it.
pub fn verify_rim(file: &[u8], at: u64) -> Result<Rim, RimError> {
    let doc = xml::parse(file)?;
    let root = &doc.root;
    if root.namespace.as_deref() != Some(SWID) || root.local != "SoftwareIdentity" {
        return Err(RimError::Content(format!(
            "the root element is <{}>, expected a SWID SoftwareIdentity",
            root.qname
        )));
    }
    let signatures: Vec<usize> = root
        .elements()
        .enumerate()
        .filter(|(_, e)| e.namespace.as_deref() == Some(DSIG) && e.local == "Signature")
        .map(|(i, _)| i)
        .collect();
    let [position] = signatures[..] else {
        return Err(RimError::Profile(format!("expected one ds:Signature under the root, found {}", signatures.len())));
    };
    let signature = root.elements().nth(position).expect("found above");
    let signed_info = one(signature, "SignedInfo")?;
    algorithm(signed_info, "CanonicalizationMethod", C14N11)?;
    algorithm(signed_info, "SignatureMethod", ECDSA_SHA384)?;
    let reference = one(signed_info, "Reference")?;
    if reference.attribute(None, "URI") != Some("") {
        return Err(RimError::Profile(format!(
            "ds:Reference URI: expected \"\" (the whole document), found {:?}",
            reference.attribute(None, "URI")
        )));
    }
    let transforms: Vec<&str> =
        one(reference, "Transforms")?.elements().map(|t| t.attribute(None, "Algorithm").unwrap_or("")).collect();
    if transforms != [ENVELOPED, C14N11] {
        return Err(RimError::Profile(format!(
            "ds:Transforms: expected [enveloped-signature, xml-c14n11], found {transforms:?}"
        )));
    }
    algorithm(reference, "DigestMethod", DIGEST_SHA384)?;
    let expected_digest = base64_text(one(reference, "DigestValue")?, "ds:DigestValue")?;
    if expected_digest.len() != 48 {
        return Err(RimError::Profile(format!("ds:DigestValue: expected 48 bytes, found {}", expected_digest.len())));
    }
    let signature_value = base64_text(one(signature, "SignatureValue")?, "ds:SignatureValue")?;
    let certificates: Vec<Vec<u8>> = one(one(signature, "KeyInfo")?, "X509Data")?
        .children_named(DSIG, "X509Certificate")
        .map(|c| base64_text(c, "ds:X509Certificate"))
        .collect::<Result<_, _>>()?;

    // The chain first: nothing below is worth reading unless NVIDIA's root vouches for the signer.
    if !(2..=MAX_CHAIN).contains(&certificates.len()) {
        return Err(RimError::Chain(format!("expected 2 to {MAX_CHAIN} certificates, found {}", certificates.len())));
    }
    let chain = verify_chain(&certificates, NVIDIA_RIM_ROOT_CA, "NVIDIA CoRIM signing Root CA", at)
        .map_err(|e| RimError::Chain(e.to_string()))?;
    let leaf = parse_cert(&certificates[0], 0).map_err(|e| RimError::Chain(e.to_string()))?;
    let canonical = xml::canonicalize(&doc, Subset::DocumentWithout(&[position])).map_err(RimError::Profile)?;
    let found_digest = Sha384::digest(&canonical);
    if found_digest.as_slice() != expected_digest.as_slice() {
        return Err(RimError::Digest { expected: hex::encode(&expected_digest), found: hex::encode(found_digest) });
    }
    let signed_info_position =
        signature.elements().position(|e| std::ptr::eq(e, signed_info)).expect("a child of the signature");
    let canonical_signed_info =
        xml::canonicalize(&doc, Subset::Subtree(&[position, signed_info_position])).map_err(RimError::Profile)?;
    let sig = p384::ecdsa::Signature::from_slice(&signature_value).map_err(|_| {
        RimError::Profile(format!("ds:SignatureValue: expected 96 bytes (r || s), found {}", signature_value.len()))
    })?;
    public_key(&leaf)
        .map_err(|e| RimError::Chain(e.to_string()))?
        .verify(&canonical_signed_info, &sig)
        .map_err(|_| RimError::Signature(chain.leaf.clone()))?;
    content(root, chain)
}

/// Reads the signed content: the version and the measurements.
fn content(root: &Element, chain: crate::nvidia::VerifiedChain) -> Result<Rim, RimError> {
    let missing = |what: &str| RimError::Content(format!("no {what}"));
    let tag_id = root.attribute(None, "tagId").ok_or_else(|| missing("tagId"))?.to_string();
    let only =
        |local: &'static str| single(root, SWID, local).map_err(|e| RimError::Content(format!("{e} {local} element")));
    let meta = only("Meta")?;
    let version = meta.attribute(None, "colloquialVersion").ok_or_else(|| missing("Meta colloquialVersion"))?;
    let product = meta.attribute(None, "product").ok_or_else(|| missing("Meta product"))?.to_string();
    if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
        return Err(RimError::Content(format!("colloquialVersion {version:?} is not a version")));
    }
    // A VBIOS version is five two-digit hex fields (96.00.5E.00.01); drivers are decimal (545.00, 570.124.03).
    let component = if version.split('.').count() == 5 && version.split('.').all(|p| p.len() == 2) {
        GpuComponent::Vbios
    } else {
        GpuComponent::Driver
    };
    let payload = only("Payload")?;
    let mut measurements = BTreeMap::new();
    let mut resources = 0;
    for r in payload.children_named(SWID, "Resource") {
        resources += 1;
        if resources > MAX_RESOURCES {
            return Err(RimError::Content(format!("more than {MAX_RESOURCES} resources")));
        }
        if r.attribute(None, "type") != Some("Measurement") {
            continue;
        }
        let index_text = r.attribute(None, "index").ok_or_else(|| missing("Resource index"))?;
        let index: u8 = index_text
            .parse()
            .ok()
            .filter(|i| *i < 64)
            .ok_or_else(|| RimError::Content(format!("Resource index {index_text:?}: expected 0 to 63")))?;
        let active = match r.attribute(None, "active") {
            Some("True") => true,
            Some("False") => false,
            other => {
                return Err(RimError::Content(format!(
                    "Resource {index}: active is {other:?}, expected True or False"
                )));
            }
        };
        let count: usize = r
            .attribute(None, "alternatives")
            .and_then(|a| a.parse().ok())
            .filter(|n| (1..=MAX_ALTERNATIVES).contains(n))
            .ok_or_else(|| {
                RimError::Content(format!("Resource {index}: alternatives must be 1 to {MAX_ALTERNATIVES}"))
            })?;
        let mut alternatives = Vec::with_capacity(count);
        for k in 0..count {
            let h = r
                .attribute(Some(SHA384_NS), &format!("Hash{k}"))
                .ok_or_else(|| RimError::Content(format!("Resource {index}: no Hash{k} of {count}")))?;
            let mut value = [0u8; 48];
            hex::decode_to_slice(h, &mut value)
                .map_err(|_| RimError::Content(format!("Resource {index}: Hash{k} is not 96 hex digits")))?;
            alternatives.push(value);
        }
        if active && measurements.insert(index, alternatives).is_some() {
            return Err(RimError::Content(format!("Resource index {index} appears twice")));
        }
    }
    if measurements.is_empty() {
        return Err(RimError::Content("no active measurement".into()));
    }
    Ok(Rim {
        component,
        version: version.to_string(),
        product,
        tag_id,
        measurements,
        signer: chain.leaf,
        signer_valid: chain.leaf_valid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_root_has_the_recorded_fingerprint() {
        assert_eq!(hex::encode(Sha256::digest(NVIDIA_RIM_ROOT_CA)), NVIDIA_RIM_ROOT_CA_SHA256);
    }
}
