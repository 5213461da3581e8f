//! End to end with the shipped enclave binary serving the real default model
//! (SmolLM2-135M-Instruct, Burn CPU backend) behind the host shim.

mod support;

use std::process::{Command, Stdio};

use cocoon_attestation::Policy;
use cocoon_client::{ChatOptions, Worker};
use cocoon_protocol::bhttp_msg::InnerRequest;
use support::*;

const MODEL_ID: &str = "smollm2-135m-instruct";

struct Served {
    _enclave: Proc,
    _host: Proc,
    url: String,
}

/// The default model under this checkout (or `COCOON_MODEL`).
fn default_model_path() -> std::path::PathBuf {
    cocoon_engine::default_model_path(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

fn serve(tag: &str, config: &str) -> Served {
    serve_model(&default_model_path(), &temp_dir(tag), config)
}

/// The enclave serving the model file at `model` (named in `config` as MODEL_PATH) behind a shim.
fn serve_model(model: &std::path::Path, dir: &std::path::Path, config: &str) -> Served {
    assert!(model.exists(), "{} is missing: run scripts/fetch-model.sh (make test does)", model.display());
    let sock = dir.join("enclave.sock");
    let config_path = dir.join("worker.toml");
    std::fs::write(&config_path, config.replace("MODEL_PATH", &model.display().to_string())).unwrap();
    let child = Command::new(workspace_bin("cocoon-enclave"))
        .args(["--listen", &format!("unix:{}", sock.display()), "--platform", "simulated", "--insecure-simulated"])
        .arg("--config")
        .arg(&config_path)
        .env("COCOON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the enclave");
    let enclave = Proc { child };
    wait_until(&format!("the enclave at {}", sock.display()), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let (host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
    Served { _enclave: enclave, _host: host, url }
}

fn config(digest: &str) -> String {
    format!(
        "[model]\nid = \"{MODEL_ID}\"\npath = \"MODEL_PATH\"\ndigest = \"{digest}\"\ncontext_length = 1024\nmax_batch = 4\n"
    )
}

fn real_digest() -> String {
    format!("sha256:{}", hex::encode(cocoon_engine::model_digest(&default_model_path()).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enclave_serves_the_default_model_streamed_and_whole() {
    let digest = real_digest();
    let s = serve("model", &config(&digest));
    let worker = Worker::attest(&s.url, &Policy::insecure_simulated(), true).await.unwrap();
    let claim = worker.verified().claims().model.clone().unwrap();
    assert_eq!(claim.id, MODEL_ID);
    assert_eq!(format!("sha256:{}", hex::encode(&claim.digest)), digest, "the attested digest is the file's");

    let opts = ChatOptions { model: MODEL_ID.into(), temperature: Some(0.0), ..Default::default() };
    let mut pieces = Vec::new();
    let outcome = worker.chat("What is the capital of France?", &opts, |p| pieces.push(p.to_string())).await.unwrap();
    assert_eq!(outcome.text, "The capital of France is Paris.");
    assert!(pieces.len() >= 5, "streamed token by token: {pieces:?}");
    let usage = outcome.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (37, 7));
    assert_eq!((outcome.receipt.prompt_tokens, outcome.receipt.completion_tokens), (37, 7));
    assert_eq!(outcome.receipt.model_digest.as_deref().map(|d| d.as_slice()), Some(claim.digest.as_slice()));

    // Non-streamed, with max_tokens: the usage block and the "length" finish.
    let body = serde_json::json!({
        "model": MODEL_ID, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    });
    let (resp, receipt) =
        worker.send(&InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes())).await.unwrap();
    assert_eq!(resp.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "The capital of France");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(receipt.unwrap().completion_tokens, 4);

    // A prompt-cache key inside the seal: the second request with the same key
    // reuses the first one's prompt and answers the same; another key does not.
    let keyed = |key: &str| {
        serde_json::json!({
            "model": MODEL_ID, "max_tokens": 4, "temperature": 0, "prompt_cache_key": key,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        })
        .to_string()
        .into_bytes()
    };
    let mut cached = Vec::new();
    for key in ["alice", "alice", "bob"] {
        let (resp, _) = worker.send(&InnerRequest::post_json("/v1/chat/completions", keyed(key))).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "The capital of France", "{v}");
        cached.push(v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap());
    }
    assert_eq!(cached, [0, 36, 0], "only the same key reuses, all but the last prompt position");
    let (resp, _) =
        worker.send(&InnerRequest::post_json("/v1/chat/completions", keyed(&"k".repeat(257)))).await.unwrap();
    assert_eq!(resp.status, 400, "an oversized prompt_cache_key is refused");

    // A field outside the allowed set: an OpenAI-style error, sealed.
    let body =
        serde_json::json!({"model": MODEL_ID, "logit_bias": {}, "messages": [{"role": "user", "content": "hi"}]});
    let (resp, _) =
        worker.send(&InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes())).await.unwrap();
    assert_eq!(resp.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[test]
fn the_enclave_prints_a_model_digest_for_configs() {
    let out = Command::new(workspace_bin("cocoon-enclave"))
        .arg("--print-model-digest")
        .arg("--model")
        .arg(default_model_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A GGUF file's digest is its plain SHA-256 (what `sha256sum` prints).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
}

#[test]
fn the_enclave_refuses_a_model_whose_digest_differs() {
    let dir = temp_dir("digest");
    let config_path = dir.join("worker.toml");
    let wrong = format!("sha256:{}", "00".repeat(32));
    std::fs::write(&config_path, config(&wrong).replace("MODEL_PATH", &default_model_path().display().to_string()))
        .unwrap();
    let out = Command::new(workspace_bin("cocoon-enclave"))
        .args(["--listen", &format!("unix:{}", dir.join("s").display()), "--platform", "simulated"])
        .arg("--insecure-simulated")
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the config expects sha256:0000") && stderr.contains(&real_digest()), "{stderr}");
}

/// Hole 6: the host can rewrite the model on its storage at any time. The
/// enclave computes with the bytes it read and hashed once: a rewrite after
/// it started changes no answer, and the next start refuses the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_rewritten_by_the_host_changes_no_answer_and_is_refused_at_the_next_start() {
    use std::io::{Seek, Write};
    let dir = temp_dir("model-rewrite");
    let model = dir.join("model.gguf");
    std::fs::copy(default_model_path(), &model).unwrap();
    let digest = real_digest();
    let served = serve_model(&model, &dir, &config(&digest));
    let worker = Worker::attest(&served.url, &Policy::insecure_simulated(), true).await.unwrap();
    let opts = ChatOptions { model: MODEL_ID.into(), temperature: Some(0.0), ..Default::default() };
    let before = worker.chat("What is the capital of France?", &opts, |_| {}).await.unwrap().text;
    assert_eq!(before, "The capital of France is Paris.");

    // The host overwrites the second half of the file (the weights) in place.
    let len = std::fs::metadata(&model).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&model).unwrap();
    f.seek(std::io::SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&vec![0x77; (len - len / 2) as usize]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = worker.chat("What is the capital of France?", &opts, |_| {}).await.unwrap().text;
    assert_eq!(after, before, "the answer came from the bytes that were hashed");
    drop(served);

    // Started again on the rewritten file: refused before it serves anything.
    let out = Command::new(workspace_bin("cocoon-enclave"))
        .args(["--listen", &format!("unix:{}", dir.join("again.sock").display()), "--platform", "simulated"])
        .arg("--insecure-simulated")
        .arg("--config")
        .arg(dir.join("worker.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("the config expects {digest}")));
}
