//! `cocoon verify-evidence` and `cocoon attest` as a verifier runs them: saved
//! evidence, hardware evidence with collateral from a file or from a PCCS (a
//! fake one on loopback serving Intel's real collateral), the on-disk cache,
//! and the per-rule summary in text and JSON.

mod support;

use std::path::Path;
use std::process::Output;

use serde_bytes::ByteBuf;

use cocoon_attestation::tdx::TdxCollateral;
use cocoon_protocol::evidence::{CLAIMS_VERSION, EVIDENCE_VERSION};
use cocoon_protocol::{Claims, EvidenceDocument, ModelClaim, Platform};
use support::*;

const QUOTE: &[u8] = include_bytes!("../../attestation/tests/data/dcap-sample-quote.bin");
const COLLATERAL: &[u8] = include_bytes!("../../attestation/tests/data/dcap-sample-collateral.json");
const AT: &str = "2025-06-20T00:00:00Z";

fn cocoon(args: &[&str]) -> Output {
    std::process::Command::new(workspace_bin("cocoon")).args(args).env("HOME", temp_dir("home")).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Evidence carrying the real TDX quote with claims it does not bind.
fn tdx_evidence(dir: &Path) -> String {
    let claims = Claims {
        version: CLAIMS_VERSION,
        platform: Platform::Tdx,
        ohttp_keys: ByteBuf::from(vec![]),
        receipt_key: ByteBuf::from(vec![2; 32]),
        model: Some(ModelClaim { id: "m".into(), digest: ByteBuf::from(vec![0xab; 32]) }),
        config_digest: ByteBuf::from(vec![0xcd; 32]),
        image_version: "t".into(),
        issued_at: 1_750_377_600,
        prices: None,
        payout_address: None,
        capacity: None,
    };
    let doc = EvidenceDocument {
        version: EVIDENCE_VERSION,
        platform: Platform::Tdx,
        claims: ByteBuf::from(claims.encode()),
        nonce: None,
        quote_or_report: ByteBuf::from(QUOTE.to_vec()),
        certificates: None,
        event_log: None,
        gpu: None,
        nonce_proof: None,
    };
    let path = dir.join("tdx-evidence.cbor");
    std::fs::write(&path, doc.encode()).unwrap();
    path.display().to_string()
}

fn assert_tdx_verified_but_unbound(out: &Output) {
    assert!(!out.status.success());
    let v = json(out);
    assert_eq!(v["accepted"], false);
    assert_eq!(v["platform"], "tdx");
    assert!(v["hardware"]["mrtd"].as_str().unwrap().starts_with("91eb2b44d141d4ec"), "{v}");
    assert_eq!(v["hardware"]["tcb_status"], "UpToDate");
    assert_eq!(v["rules"][0]["rule"], "allowed_platforms");
    assert_eq!(v["rules"][1]["rule"], "signature");
    assert!(v["error"].as_str().unwrap().starts_with("report data does not bind the claims"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_simulated_evidence_verifies_only_under_a_development_policy() {
    let dir = temp_dir("verify-sim");
    let sock = dir.join("enclave.sock");
    let _enclave = start_enclave(&sock, 0);
    let (_host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
    let client = cocoon_client::http::HttpClient::default();
    let (status, body) = client.get(format!("{url}/v1/attestation").parse().unwrap(), 1 << 20).await.unwrap();
    assert!(status.is_success());
    let file = dir.join("evidence.cbor");
    std::fs::write(&file, &body).unwrap();
    let f = file.to_str().unwrap();

    let out = cocoon(&["verify-evidence", f, "--insecure-simulated", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert_eq!(v["accepted"], true);
    assert_eq!(v["hardware"]["kind"], "simulated");

    let out = cocoon(&["verify-evidence", f]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("[FAIL] allow_simulated"), "{text}");
    assert!(text.contains("evidence refused"), "{text}");

    let out = cocoon(&["verify-evidence", f, "--insecure-simulated", "--nonce", "00ff"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonce: expected 00ff, evidence has no nonce"));
}

#[test]
fn tdx_evidence_with_collateral_from_a_file() {
    let dir = temp_dir("verify-tdx-file");
    let ev = tdx_evidence(&dir);
    let coll = dir.join("collateral.json");
    std::fs::write(&coll, COLLATERAL).unwrap();
    let c = coll.to_str().unwrap();
    assert_tdx_verified_but_unbound(&cocoon(&["verify-evidence", &ev, "--collateral", c, "--at", AT, "--json"]));
    // The readable summary shows the measurements and each rule.
    let out = cocoon(&["verify-evidence", &ev, "--collateral", c, "--at", AT]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("TCB status      UpToDate"), "{text}");
    assert!(text.contains("MRTD            91eb2b44d141d4ec"), "{text}");
    assert!(text.contains("[ok] signature"), "{text}");
    // Outside the collateral's window the quote is not judged at all.
    let out = cocoon(&["verify-evidence", &ev, "--collateral", c, "--at", "2025-08-01T00:00:00Z"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("collateral is valid from 2025-06-19T10:32:27Z to 2025-07-19T10:16:03Z"), "{text}");
    let out = cocoon(&["verify-evidence", &ev, "--at", AT]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("no TDX collateral for FMSPC B0C06F000000"), "{text}");
}

/// A PCCS on loopback that serves the real collateral in the API v4 layout.
async fn fake_pccs() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::http::HeaderMap;
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let c = TdxCollateral::from_json(COLLATERAL).unwrap();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let header = |name: &'static str, chain: &str| {
        let mut h = HeaderMap::new();
        h.insert(name, urlencoding::encode(chain).parse().unwrap());
        h
    };
    let pck = (header("SGX-PCK-CRL-Issuer-Chain", &c.pck_crl_issuer_chain), c.pck_crl.clone());
    let tcb = (
        header("TCB-Info-Issuer-Chain", &c.tcb_info_issuer_chain),
        format!(r#"{{"tcbInfo":{},"signature":"{}"}}"#, c.tcb_info, hex::encode(&c.tcb_info_signature)),
    );
    let qe = (
        header("SGX-Enclave-Identity-Issuer-Chain", &c.qe_identity_issuer_chain),
        format!(r#"{{"enclaveIdentity":{},"signature":"{}"}}"#, c.qe_identity, hex::encode(&c.qe_identity_signature)),
    );
    let root = hex::encode(&c.root_ca_crl);
    let h = hits.clone();
    let app = axum::Router::new()
        .route("/sgx/certification/v4/pckcrl", get(move || async move { pck.clone() }))
        .route("/tdx/certification/v4/tcb", get(move || async move { tcb.clone() }))
        .route("/tdx/certification/v4/qe/identity", get(move || async move { qe.clone() }))
        .route("/sgx/certification/v4/rootcacrl", get(move || async move { root.clone() }))
        .layer(axum::middleware::from_fn(move |req, next: axum::middleware::Next| {
            h.fetch_add(1, Ordering::SeqCst);
            async move { next.run(req).await }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_collateral_from_a_pccs_is_cached_until_its_next_update() {
    use std::sync::atomic::Ordering;
    let dir = temp_dir("verify-tdx-pccs");
    let ev = tdx_evidence(&dir);
    let cache = dir.join("cache");
    let (pccs, hits) = fake_pccs().await;
    let args = |pccs: &str| {
        vec![
            "verify-evidence".to_string(),
            ev.clone(),
            "--pccs".into(),
            pccs.to_string(),
            "--collateral-cache".into(),
            cache.display().to_string(),
            "--at".into(),
            AT.into(),
            "--json".into(),
        ]
    };
    let run =
        |a: Vec<String>| tokio::task::spawn_blocking(move || cocoon(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_tdx_verified_but_unbound(&run(args(&pccs)).await.unwrap());
    assert_eq!(hits.load(Ordering::SeqCst), 4, "PCK CRL, TCB info, QE identity, root CA CRL");
    let cached = cache.join("tdx-B0C06F000000-platform.json");
    assert_eq!(
        TdxCollateral::from_json(&std::fs::read(&cached).unwrap()).unwrap(),
        TdxCollateral::from_json(COLLATERAL).unwrap()
    );
    // Inside the window the cache answers, even with the PCCS gone.
    assert_tdx_verified_but_unbound(&run(args("http://127.0.0.1:9")).await.unwrap());
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}
