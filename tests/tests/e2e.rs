//! End to end with real processes on loopback: the test enclave (Unix socket),
//! the host shim (TCP), and the client library in the test.

mod support;

use std::time::{Duration, Instant};

use cocoon_attestation::{AttestationError, Policy};
use cocoon_client::{ChatOptions, ClientError, Worker};
use cocoon_protocol::bhttp_msg::InnerRequest;
use cocoon_protocol::ohttp::OhttpError;
use cocoon_tests::echo_engine::{MODEL_ID, answer_tokens};
use support::*;

fn dev_policy() -> Policy {
    Policy::insecure_simulated()
}

fn opts() -> ChatOptions {
    ChatOptions { model: MODEL_ID.into(), ..Default::default() }
}

fn expected(prompt: &str) -> String {
    answer_tokens(prompt).concat()
}

struct Worker2 {
    _enclave: Proc,
    _host: Proc,
    url: String,
}

fn worker(tag: &str, token_delay_ms: u64) -> Worker2 {
    let dir = temp_dir(tag);
    let sock = dir.join("enclave.sock");
    let enclave = start_enclave(&sock, token_delay_ms);
    let (host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
    Worker2 { _enclave: enclave, _host: host, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answer_is_correct_and_nothing_readable_crosses_the_shim() {
    let w = worker("stream", 30);
    let relay = start_relay(&w.url, false).await;
    let worker = Worker::attest(&relay.url, &dev_policy(), true).await.unwrap();
    let prompt = "please reverse these seven distinctive words quickly";
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let outcome =
        worker.chat(prompt, &opts(), |piece| arrivals.push((start.elapsed(), piece.to_string()))).await.unwrap();
    let total = start.elapsed();

    assert_eq!(outcome.text, expected(prompt));
    assert_eq!(arrivals.len(), 7, "one delta per token");
    // Streamed: the first token arrived well before the last one (30 ms per token).
    assert!(arrivals[0].0 + Duration::from_millis(120) < arrivals[6].0, "{arrivals:?}");
    assert!(arrivals[6].0 <= total);
    let usage = outcome.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 7));
    assert_eq!((outcome.receipt.prompt_tokens, outcome.receipt.completion_tokens), (7, 7));
    assert_eq!(outcome.receipt.model_id, MODEL_ID);

    let wire = relay.recording.bytes();
    assert!(find(&wire, b"message/ohttp-chunked-req").is_some(), "the relay saw the sealed exchange");
    for secret in [prompt.to_string()]
        .into_iter()
        .chain(prompt.split_whitespace().map(str::to_uppercase))
        .chain(prompt.split_whitespace().map(str::to_string))
    {
        assert!(find(&wire, secret.as_bytes()).is_none(), "{secret:?} crossed the shim in clear");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_fails_authentication_and_the_enclave_keeps_serving() {
    let w = worker("flip", 0);
    let relay = start_relay(&w.url, true).await;
    let worker = Worker::attest(&relay.url, &dev_policy(), true).await.unwrap();
    let body = serde_json::json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "a b c"}]});
    let req = InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes());
    let err = worker.send(&req).await.unwrap_err();
    assert!(matches!(err, ClientError::Ohttp(OhttpError::Authentication)), "{err}");
    // The next request goes through, on the same enclave.
    let (resp, receipt) = worker.send(&req).await.unwrap();
    assert_eq!(resp.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "C B A ");
    assert_eq!(v["usage"]["total_tokens"], 6);
    assert_eq!(receipt.unwrap().completion_tokens, 3, "non-streamed answers carry the receipt in a header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_evidence_is_refused_under_the_default_policy() {
    let w = worker("policy", 0);
    let err = Worker::attest(&w.url, &Policy::default(), true).await.err().unwrap();
    assert!(matches!(err, ClientError::Attestation(AttestationError::Policy { rule: "allow_simulated", .. })), "{err}");
    // The CLI refuses too, and says how to opt in.
    let out = std::process::Command::new(workspace_bin("cocoon")).args(["attest", &w.url]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_simulated") && stderr.contains("--insecure-simulated"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_attests_and_chats_through_the_shim() {
    let w = worker("cli", 0);
    let out = std::process::Command::new(workspace_bin("cocoon"))
        .args(["chat", &w.url, "--model", MODEL_ID, "--insecure-simulated", "one two three"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "THREE TWO ONE");
    assert!(stderr.contains("platform        simulated") && stderr.contains("receipt"), "{stderr}");
    let out = std::process::Command::new(workspace_bin("cocoon"))
        .args(["attest", &w.url, "--insecure-simulated", "--nonce", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["platform"], "simulated");
    assert_eq!(v["claims"]["model"]["id"], MODEL_ID);
    assert_eq!(v["accepted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_whose_claims_do_not_match_is_refused_before_any_prompt() {
    use axum::routing::{get, post};
    use cocoon_attestation::{EvidenceProducer, report_data, simulated::SimulatedProducer};
    use cocoon_protocol::evidence::{CLAIMS_VERSION, EVIDENCE_VERSION, EvidenceDocument};
    use cocoon_protocol::ohttp::{GatewayKey, KeyConfig};
    use cocoon_protocol::{Claims, Platform};
    use serde_bytes::ByteBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // A host that serves evidence for one set of claims while handing out others
    // (an attacker's OHTTP key), and counts what it is sent.
    let claims = |key: &GatewayKey| Claims {
        version: CLAIMS_VERSION,
        platform: Platform::Simulated,
        ohttp_keys: ByteBuf::from(KeyConfig::encode_list(std::slice::from_ref(key.config()))),
        receipt_key: ByteBuf::from(vec![1; 32]),
        model: None,
        config_digest: ByteBuf::from(vec![0; 32]),
        image_version: "0".into(),
        issued_at: 4_000_000_000,
        prices: None,
        payout_address: None,
        capacity: None,
    };
    let genuine = claims(&GatewayKey::generate(1)).encode();
    let forged = claims(&GatewayKey::generate(1)).encode();
    let producer = SimulatedProducer::new();
    let ev = producer.produce(&report_data(&genuine, None)).unwrap();
    let doc = EvidenceDocument {
        version: EVIDENCE_VERSION,
        platform: Platform::Simulated,
        claims: ByteBuf::from(forged),
        nonce: None,
        quote_or_report: ByteBuf::from(ev.quote_or_report),
        certificates: None,
        event_log: None,
        gpu: None,
        nonce_proof: None,
    }
    .encode();
    static POSTS: AtomicUsize = AtomicUsize::new(0);
    let app = axum::Router::new().route("/v1/attestation", get(move || async move { doc.clone() })).route(
        "/v1/ohttp",
        post(|| async {
            POSTS.fetch_add(1, Ordering::SeqCst);
            ""
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut policy = dev_policy();
    policy.max_evidence_age_secs = None;
    let err = Worker::attest(&url, &policy, false).await.err().unwrap();
    assert!(matches!(err, ClientError::Attestation(AttestationError::ReportDataMismatch { .. })), "{err}");
    assert_eq!(POSTS.load(Ordering::SeqCst), 0, "nothing was sent to a worker that failed verification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413_and_unopenable_request_gets_400() {
    let w = worker("limits", 0);
    let host = w.url.trim_start_matches("http://");
    let big = 2 << 20;
    let head = format!(
        "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: message/ohttp-req\r\ncontent-length: {big}\r\nconnection: close\r\n\r\n"
    );
    let (status, body) = raw_http(&w.url, head.as_bytes()).await;
    assert_eq!(status, 413, "{body}");

    let junk = vec![0x01u8; 100];
    let mut req = format!(
        "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: message/ohttp-req\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        junk.len()
    )
    .into_bytes();
    req.extend(&junk);
    let (status, body) = raw_http(&w.url, &req).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot open the sealed request"), "{body}");

    // The enclave carries on.
    let worker = Worker::attest(&w.url, &dev_policy(), true).await.unwrap();
    assert_eq!(worker.chat("still here", &opts(), |_| {}).await.unwrap().text, "HERE STILL ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_errors_come_back_sealed_in_openai_style() {
    let w = worker("apierr", 0);
    let worker = Worker::attest(&w.url, &dev_policy(), false).await.unwrap();
    let body = serde_json::json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "logit_bias": {}});
    let (resp, receipt) =
        worker.send(&InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes())).await.unwrap();
    assert_eq!(resp.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("logit_bias"), "{v}");
    assert!(receipt.is_none(), "no receipt without a completion");

    let body = serde_json::json!({"model": "other", "messages": [{"role": "user", "content": "x"}]});
    let (resp, _) =
        worker.send(&InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes())).await.unwrap();
    assert_eq!(resp.status, 404);

    let models = InnerRequest { method: "GET".into(), path: "/v1/models".into(), headers: vec![], body: vec![] };
    let (resp, _) = worker.send(&models).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL_ID);

    // Text completions, streamed, with max_tokens honoured.
    let body = serde_json::json!({"model": MODEL_ID, "prompt": "a b c d e", "max_tokens": 2, "stream": true});
    let mut s =
        worker.stream(&InnerRequest::post_json("/v1/completions", body.to_string().into_bytes())).await.unwrap();
    let mut sse = Vec::new();
    while let Some(e) = s.next_event().await.unwrap() {
        if let cocoon_protocol::bhttp_msg::ResponseEvent::Content(c) = e {
            sse.extend(c);
        }
    }
    let sse = String::from_utf8(sse).unwrap();
    assert!(sse.contains("\"text\":\"E \"") && sse.contains("\"finish_reason\":\"length\""), "{sse}");
    assert_eq!(s.receipt().unwrap().unwrap().completion_tokens, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_answers_503_while_the_enclave_is_down_and_recovers() {
    let dir = temp_dir("restart");
    let sock = dir.join("enclave.sock");
    let enclave = start_enclave(&sock, 0);
    let (_host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
    assert_eq!(get(&url, "/healthz").await.0, 200);
    drop(enclave);
    let (status, body) = get(&url, "/v1/attestation").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("enclave unavailable"), "{body}");
    let (status, body) = get(&url, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    let err = Worker::attest(&url, &dev_policy(), true).await.err().unwrap();
    assert!(matches!(err, ClientError::Status { status: 503, .. }), "{err}");

    let _enclave = start_enclave(&sock, 0);
    assert_eq!(get(&url, "/healthz").await.0, 200);
    let worker = Worker::attest(&url, &dev_policy(), true).await.unwrap();
    assert_eq!(worker.chat("back again", &opts(), |_| {}).await.unwrap().text, "AGAIN BACK ");
    let (status, metrics) = get(&url, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("cocoon_host_requests_total{endpoint=\"attestation\",status=\"503\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streamed_requests_all_complete() {
    let w = worker("concurrent", 1);
    let worker = std::sync::Arc::new(Worker::attest(&w.url, &dev_policy(), true).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let worker = worker.clone();
        tasks.push(tokio::spawn(async move {
            let prompt = format!("request number {i} of many");
            let mut pieces = 0;
            let out = worker.chat(&prompt, &opts(), |_| pieces += 1).await?;
            Ok::<_, ClientError>((prompt, out, pieces))
        }));
    }
    for t in tasks {
        let (prompt, out, pieces) = t.await.unwrap().unwrap();
        assert_eq!(out.text, expected(&prompt));
        assert_eq!(pieces, 5);
        assert_eq!(out.receipt.completion_tokens, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurements_endpoint_serves_the_operator_file() {
    let dir = temp_dir("measure");
    let sock = dir.join("enclave.sock");
    let _enclave = start_enclave(&sock, 0);
    let m = dir.join("m.json");
    std::fs::write(&m, "{\"snp\":{\"launch_digest\":\"00\"}}").unwrap();
    let (_host, url) = start_host(&format!("unix:{}", sock.display()), &["--measurements", m.to_str().unwrap()]);
    let (status, body) = get(&url, "/v1/measurements").await;
    assert_eq!((status, body.as_str()), (200, "{\"snp\":{\"launch_digest\":\"00\"}}"));
    let (_host2, url2) = start_host(&format!("unix:{}", sock.display()), &[]);
    assert_eq!(get(&url2, "/v1/measurements").await.0, 404);
}
