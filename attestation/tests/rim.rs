//! NVIDIA's RIMs (`tests/data/gpu/rims`, see PROVENANCE.md): signatures and
//! chains verified at fixed times, altered copies refused, and the reference
//! values they give compared with the real GPU reports.

use cocoon_attestation::gpu_reference::{self, GpuComponent, GpuReferenceValues};
use cocoon_attestation::nvidia::{VerifiedGpu, chain_from_pem, verify_gpu_report};
use cocoon_attestation::rim::{Rim, RimError, verify_rim};
use cocoon_attestation::{parse_rfc3339, rfc3339};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/gpu/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const DRIVER_545: &str = "rims/Driver_RIM_test_no_gpu.swidtag";
const VBIOS_0001_TEST: &str = "rims/1010_0200_882_96005E0001_test_no_gpu.swidtag";
const VBIOS_0001_PROD: &str = "rims/1010_0200_882_96005E0001_PROD.swidtag";
const VBIOS_0004_PROD: &str = "rims/1010_0205_862_96005E0004_PROD.swidtag";
const DRIVER_EXPIRED: &str = "rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml";

/// (file, component, version, signer's not-before, number of active indices)
const VALID: [(&str, GpuComponent, &str, &str, usize); 4] = [
    (DRIVER_545, GpuComponent::Driver, "545.00", "2023-06-27T06:10:12Z", 21),
    (VBIOS_0001_TEST, GpuComponent::Vbios, "96.00.5E.00.01", "2023-06-23T09:38:54Z", 12),
    (VBIOS_0001_PROD, GpuComponent::Vbios, "96.00.5E.00.01", "2023-06-23T09:30:33Z", 12),
    (VBIOS_0004_PROD, GpuComponent::Vbios, "96.00.5E.00.04", "2023-09-06T08:39:09Z", 12),
];

fn an_hour_after(t: &str) -> u64 {
    parse_rfc3339(t).unwrap() + 3600
}

fn verified(file: &str) -> Rim {
    let (_, _, _, from, _) = VALID.iter().find(|v| v.0 == file).unwrap();
    verify_rim(&data(file), an_hour_after(from)).unwrap()
}

#[test]
fn every_signed_rim_verifies_and_reads_as_documented() {
    for (file, component, version, from, active) in VALID {
        let rim = verify_rim(&data(file), an_hour_after(from)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(rim.component, component, "{file}");
        assert_eq!(rim.version, version, "{file}");
        assert_eq!(rim.product, "GH100");
        assert_eq!(rim.signer, "HCC RIM L4 Signer");
        assert_eq!(rfc3339(rim.signer_valid.0), from);
        assert_eq!(rim.measurements.len(), active, "{file}");
        let indices: Vec<u8> = rim.measurements.keys().copied().collect();
        let expected: Vec<u8> = match component {
            GpuComponent::Driver => std::iter::once(7).chain(21..=40).collect(),
            GpuComponent::Vbios => (0..=6).chain(8..=12).collect(),
        };
        assert_eq!(indices, expected, "{file}");
    }
    // Index 35 (NVDEC0) has two alternatives in the driver RIM.
    assert_eq!(verified(DRIVER_545).measurements[&35].len(), 2);
}

#[test]
fn rims_are_refused_outside_their_signers_validity() {
    let today = parse_rfc3339("2026-12-02T00:00:00Z").unwrap();
    for (file, _, _, from, _) in VALID {
        let e = verify_rim(&data(file), today).unwrap_err();
        assert!(
            matches!(&e, RimError::Chain(m) if m.contains("HCC RIM L4 Signer is valid from") && m.contains("outside it")),
            "{file}: {e}"
        );
        let e = verify_rim(&data(file), parse_rfc3339(from).unwrap() - 1).unwrap_err();
        assert!(matches!(e, RimError::Chain(_)), "{file}: {e}");
    }
}

#[test]
fn the_rim_whose_digest_does_not_match_its_document_is_refused() {
    let e = verify_rim(&data(DRIVER_EXPIRED), an_hour_after("2025-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(e, RimError::Digest { .. }), "{e}");
    // And a day later its signer has expired too, which is found first.
    let e = verify_rim(&data(DRIVER_EXPIRED), an_hour_after("2025-01-02T00:00:00Z")).unwrap_err();
    assert!(matches!(e, RimError::Chain(_)), "{e}");
}

fn altered(file: &str, from: &str, to: &str) -> Result<Rim, RimError> {
    let text = String::from_utf8(data(file)).unwrap();
    assert!(text.contains(from), "{from}");
    let (_, _, _, at, _) = VALID.iter().find(|v| v.0 == file).unwrap();
    verify_rim(text.replacen(from, to, 1).as_bytes(), an_hour_after(at))
}

#[test]
fn altered_copies_are_refused_each_with_its_own_error() {
    let f = DRIVER_545;
    let golden = "0e0ee161b59bf124ce6b6dca6efa7616d28077862c0e57dca7d5efd63d00eeed4851922941e846a38c464cbedbc168d9";
    let digest = |r: Result<Rim, RimError>| matches!(r, Err(RimError::Digest { .. }));
    // The content: a golden value, an index turned active, the version, a prefix.
    assert!(digest(altered(f, golden, &golden.replace("0e0e", "0e0f"))));
    assert!(digest(altered(f, "index=\"0\" active=\"False\"", "index=\"0\" active=\"True\"")));
    assert!(digest(altered(f, "colloquialVersion=\"545.00\"", "colloquialVersion=\"550.00\"")));
    assert!(digest(altered(f, "<ns0:Entity", "<Entity")));
    assert!(digest(altered(f, "<ns0:Entity name=\"NVIDIA Corporation\" role=\"softwareCreator tagCreator\"/>", "")));
    // The signature and what it signs.
    let signature = |r: Result<Rim, RimError>| matches!(r, Err(RimError::Signature(_)));
    let text = String::from_utf8(data(f)).unwrap();
    let value = text.split("<ds:SignatureValue>").nth(1).unwrap().split('<').next().unwrap();
    let mut bytes = base64_decode(value);
    bytes[10] ^= 1;
    assert!(signature(altered(f, value, &base64_encode(&bytes))));
    assert!(
        matches!(altered(f, value, &base64_encode(&bytes[..90])), Err(RimError::Profile(m)) if m.contains("96 bytes"))
    );
    let digest_value = text.split("<ds:DigestValue>").nth(1).unwrap().split('<').next().unwrap();
    assert!(digest(altered(f, digest_value, &digest_value.replacen("D", "E", 1))));
    // The profile: another algorithm, transform or reference, a second signature.
    let profile = |r: Result<Rim, RimError>, why: &str| matches!(&r, Err(RimError::Profile(m)) if m.contains(why));
    assert!(profile(
        altered(f, "xmldsig-more#ecdsa-sha384", "xmldsig-more#ecdsa-sha256"),
        "ds:SignatureMethod: expected"
    ));
    assert!(profile(
        altered(f, "<ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>", ""),
        "ds:Transforms"
    ));
    assert!(profile(altered(f, "<ds:Reference URI=\"\">", "<ds:Reference URI=\"#x\">"), "ds:Reference URI"));
    let sig_start = text.find("<ds:Signature ").unwrap();
    let sig = &text[sig_start..text.rfind("</SoftwareIdentity>").unwrap()];
    assert!(matches!(
        altered(f, "</SoftwareIdentity>", &format!("{sig}</SoftwareIdentity>")),
        Err(RimError::Profile(m)) if m.contains("found 2")
    ));
    // The chain: certificates dropped or reordered.
    let certs: Vec<&str> =
        text.split("<ds:X509Certificate>").skip(1).map(|s| s.split("</ds:X509Certificate>").next().unwrap()).collect();
    assert_eq!(certs.len(), 4);
    let chain = |r: Result<Rim, RimError>, why: &str| matches!(&r, Err(RimError::Chain(m)) if m.contains(why));
    let drop_root = format!("<ds:X509Certificate>{}</ds:X509Certificate>", certs[3]);
    assert!(chain(altered(f, &drop_root, ""), "not the pinned NVIDIA CoRIM signing Root CA"));
    let drop_l3 = format!("<ds:X509Certificate>{}</ds:X509Certificate>", certs[1]);
    assert!(chain(altered(f, &drop_l3, ""), "is not signed by"));
    let swapped = text.replacen(certs[0], "LEAF", 1).replacen(certs[1], certs[0], 1).replacen("LEAF", certs[1], 1);
    let e = verify_rim(swapped.as_bytes(), an_hour_after(VALID[0].3)).unwrap_err();
    assert!(matches!(e, RimError::Chain(_)), "{e}");
    // Malformed XML.
    assert!(matches!(altered(f, "</ns0:Payload>", "</ns0:Payloa>"), Err(RimError::Xml(_))));
    assert!(matches!(verify_rim(&data(f)[..data(f).len() / 2], an_hour_after(VALID[0].3)), Err(RimError::Xml(_))));
}

#[test]
fn formatting_that_canonicalisation_removes_keeps_the_signature_valid() {
    let f = DRIVER_545;
    // Attribute order, quotes, whitespace inside tags, an empty element
    // written out, a comment and an XML declaration do not change the signed form.
    altered(f, "corpus=\"false\" name=\"GH100\"", "name='GH100'   corpus=\"false\"").unwrap();
    altered(
        f,
        "<ns0:Entity name=\"NVIDIA Corporation\" role=\"softwareCreator tagCreator\"/>",
        "<ns0:Entity role=\"softwareCreator tagCreator\"\n name=\"NVIDIA Corporation\" ></ns0:Entity><!-- hi -->",
    )
    .unwrap();
    altered(f, "<SoftwareIdentity ", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<SoftwareIdentity ").unwrap();
    // A character reference for a character that needs none.
    altered(f, "name=\"GH100\"", "name=\"GH&#x31;00\"").unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn gpu(report: &str, chain: &str, nonce: &str) -> VerifiedGpu {
    let report = hex::decode(String::from_utf8(data(report)).unwrap().trim()).unwrap();
    let chain = chain_from_pem(&data(chain)).unwrap();
    let nonce: [u8; 32] = hex::decode(nonce).unwrap().try_into().unwrap();
    verify_gpu_report(&report, &chain, &nonce, 1_800_000_000).unwrap()
}

fn reference(file: &str) -> GpuReferenceValues {
    let (_, _, _, from, _) = VALID.iter().find(|v| v.0 == file).unwrap();
    let values = verified(file).reference_values(&data(file), Some(file.into()), an_hour_after(from));
    // Through JSON, as a policy file holds them.
    let json = serde_json::to_vec(&values).unwrap();
    serde_json::from_slice::<GpuReferenceValues>(&json).unwrap().normalise().unwrap()
}

#[test]
fn the_matching_rim_pair_passes_its_report_and_the_others_name_each_mismatch() {
    let g = gpu(
        "nvtrust-2023/attestationReport.txt",
        "nvtrust-2023/gpuAkCertChain.txt",
        "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e",
    );
    let pair = [reference(DRIVER_545), reference(VBIOS_0001_TEST)];
    let ok = gpu_reference::compare(&pair, &g).unwrap();
    assert!(ok.contains("driver 545.00") && ok.contains("VBIOS 96.00.5E.00.01"), "{ok}");
    // Same VBIOS version, production RIM: indices 1, 2, 3 and 9 differ.
    let prod = reference(VBIOS_0001_PROD);
    let mismatched: Vec<String> = prod.mismatches(&g);
    let indices: Vec<&str> = mismatched.iter().map(|m| m.split(" (").next().unwrap()).collect();
    assert_eq!(indices, ["index 1", "index 2", "index 3", "index 9"], "{mismatched:?}");
    let e = gpu_reference::compare(&[reference(DRIVER_545), prod], &g).unwrap_err();
    assert!(e.contains("index 9 (block 10): expected ") && !e.contains("driver 545"), "{e}");
    // With both VBIOS sets, the one that matches wins.
    gpu_reference::compare(&[reference(DRIVER_545), reference(VBIOS_0001_PROD), reference(VBIOS_0001_TEST)], &g)
        .unwrap();
    // A driver set alone leaves the VBIOS unmatched.
    let e = gpu_reference::compare(&[reference(DRIVER_545)], &g).unwrap_err();
    assert!(
        e.contains("no VBIOS reference values for GH100 VBIOS 96.00.5E.00.01 (the policy has none for this chip)"),
        "{e}"
    );
}

#[test]
fn the_other_reports_mismatch_as_documented() {
    let shared = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
    let expired = gpu(
        "sdk-hopper-expired/hopperAttestationReportExpired.txt",
        "sdk-hopper-expired/hopperCertChainExpired.txt",
        shared,
    );
    let m = reference(VBIOS_0004_PROD).mismatches(&expired);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("index 9 (block 10): expected 7f3e9382785513c1"), "{m:?}");
    assert!(m[0].ends_with("found 059b32e712a153f4") || m[0].contains("found 059b32e712a153f4"), "{m:?}");
    // No RIM here has nvtrust-hopper's versions.
    let hopper = gpu("nvtrust-hopper/hopperAttestationReport.txt", "nvtrust-hopper/hopperCertChain.txt", shared);
    let all: Vec<GpuReferenceValues> = VALID.iter().map(|v| reference(v.0)).collect();
    let e = gpu_reference::compare(&all, &hopper).unwrap_err();
    assert!(e.contains("no driver reference values for GH100 driver 550.90.07 (the policy has 545.00)"), "{e}");
    assert!(e.contains("VBIOS 96.00.9F.00.01 (the policy has 96.00.5E.00.01, 96.00.5E.00.01, 96.00.5E.00.04)"), "{e}");
    // A Blackwell report finds no set for its chip.
    let blackwell = gpu("sdk-blackwell/blackwellAttestationReport.txt", "sdk-blackwell/blackwellCertChain.txt", shared);
    let e = gpu_reference::compare(&all, &blackwell).unwrap_err();
    assert!(
        e.contains("no driver reference values for GB100 driver 575.32 (the policy has none for this chip)"),
        "{e}"
    );
}

#[test]
fn reference_value_files_refuse_bad_values() {
    let mut r = reference(DRIVER_545);
    r.measurements.insert(7, vec!["abcd".into()]);
    assert!(r.clone().normalise().unwrap_err().contains("measurement 7: expected 96 hex digits"));
    r.measurements.insert(7, vec![]);
    assert!(r.clone().normalise().unwrap_err().contains("an empty list allows nothing"));
    r.measurements.clear();
    assert!(r.clone().normalise().unwrap_err().contains("constrain nothing"));
    r.format = Some("other/1".into());
    assert!(r.normalise().unwrap_err().contains("format"));
}

/// The canonicaliser against libxml2's (lxml, installed by `make measure-tools`)
/// on every RIM and on documents written to exercise namespaces, attribute
/// order and normalisation, references, CDATA, processing instructions and
/// comments. (No xml:lang above a compared subtree: lxml canonicalises an
/// element as a copy of its subtree, without the inherited xml:lang and
/// xml:space that C14N 1.1 section 2.4 adds; `xml.rs` tests that case.)
#[test]
fn canonical_forms_equal_libxml2s() {
    use cocoon_attestation::xml::{Subset, canonicalize, parse};
    use sha2::{Digest, Sha256};
    let dir = std::env::temp_dir().join(format!("cocoon-c14n-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<std::path::PathBuf> = ["rims"]
        .iter()
        .flat_map(|d| std::fs::read_dir(format!("{}/tests/data/gpu/{d}", env!("CARGO_MANIFEST_DIR"))).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    let written = [
        "<?xml version=\"1.0\"?>\n<?pi-before data?>\n<!-- c -->\n<doc xmlns:b=\"http://www.ietf.org\" xmlns:a=\"http://www.w3.org\" \
         xmlns=\"http://example.org\"><e5 a:attr=\"out\" b:attr=\"sorted\" attr2=\"all\" attr=\"I'm\" xmlns:b=\"http://www.ietf.org\"/>\
         <e6 xmlns=\"\" xmlns:a=\"http://www.w3.org\"><e7 xmlns=\"http://www.ietf.org\"><e8 xmlns=\"\" xmlns:a=\"http://www.w3.org\">\
         <e9 xmlns=\"\" xmlns:a=\"http://www.ietf.org\"/></e8></e7></e6><?pi-inside  x ?></doc>\n<?pi-after?>\n<!-- end -->",
        "<doc>\r\n<text>First line&#x0d;&#10;Second line</text><value>&#x32;</value>\
         <compute><![CDATA[value>\"0\" && value<\"10\" ?\"valid\":\"error\"]]></compute>\
         <norm attr=' &apos;   &#x20;&#13;&#xa;&#9;   &apos; '/>\t<tab attr=\"a\tb\nc\"/>&gt;&lt;&amp;&quot;&apos;</doc>",
        "<r xmlns=\"urn:d\" xmlns:p=\"urn:d\"><p:a p:x=\"1\" y=\"2\" xml:space=\"preserve\"/>\
         <ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"><ds:SignedInfo a=\"&#xA;\"><ds:X/>text</ds:SignedInfo>\
         </ds:Signature>  tail text <z xml:lang=\"en\">\u{e9}\u{4e2d}\u{1F600}</z></r>",
    ];
    for (i, text) in written.iter().enumerate() {
        let path = dir.join(format!("written-{i}.xml"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let python = format!("{}/../.cache/measure-venv/bin/python3", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&python)
        .arg(format!("{}/tests/c14n_lxml.py", env!("CARGO_MANIFEST_DIR")))
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}; run `make measure-tools` to install lxml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), files.len());
    let sha = |b: Vec<u8>| hex::encode(Sha256::digest(b));
    for (path, expected) in files.iter().zip(lines) {
        let doc = parse(&std::fs::read(path).unwrap()).unwrap();
        let whole = sha(canonicalize(&doc, Subset::Document).unwrap());
        let signature = doc.root.elements().position(|e| e.local == "Signature");
        let (without, info) = match signature {
            Some(s) => (
                sha(canonicalize(&doc, Subset::DocumentWithout(&[s])).unwrap()),
                sha(canonicalize(&doc, Subset::Subtree(&[s, 0])).unwrap()),
            ),
            None => (whole.clone(), "-".to_string()),
        };
        assert_eq!(format!("{whole} {without} {info}"), expected, "{}", path.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
