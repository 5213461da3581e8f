//! The network's processes for end-to-end tests: test workers (enclave and
//! host shim), `cocoon-proxy`, client runners, sealed requests crafted by hand,
//! and the ledger as the proxy's CLI prints it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use cocoon_attestation::Policy;
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_client::serve::Runner;
use cocoon_protocol::authorization::ClientAuthorization;
use cocoon_protocol::{Commission, NanoTon, Prices, media};
use cocoon_tests::echo_engine::MODEL_ID;

use super::*;

pub const PRICES: Prices = Prices { prompt_per_1k: NanoTon(1_000_000), completion_per_1k: NanoTon(3_000_000) };
pub const COMMISSION_PPM: u64 = 125_000;

/// One worker: the test enclave behind a host shim.
pub struct TestWorker {
    pub enclave: Option<Proc>,
    pub host: Option<Proc>,
    pub url: String,
    pub sock: PathBuf,
    pub config: PathBuf,
    pub delay_ms: u64,
}

impl TestWorker {
    pub fn start(dir: &Path, name: &str, delay_ms: u64) -> Self {
        Self::with_capacity(dir, name, delay_ms, 16)
    }

    pub fn with_capacity(dir: &Path, name: &str, delay_ms: u64, capacity: u32) -> Self {
        Self::priced(dir, name, delay_ms, capacity, PRICES)
    }

    /// A worker whose engine pauses `prefill_ms` before each answer's first token.
    pub fn prefilling(dir: &Path, name: &str, delay_ms: u64, capacity: u32, prefill_ms: u64) -> Self {
        let sock = dir.join(format!("{name}.sock"));
        let config = priced_config(dir, name, (PRICES.prompt_per_1k.0, PRICES.completion_per_1k.0), capacity);
        let enclave = start_enclave_prefilling(&sock, delay_ms, prefill_ms, Some(&config), MODEL_ID);
        let (host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
        TestWorker { enclave: Some(enclave), host: Some(host), url, sock, config, delay_ms }
    }

    /// A worker charging `prices`.
    pub fn priced(dir: &Path, name: &str, delay_ms: u64, capacity: u32, prices: Prices) -> Self {
        let sock = dir.join(format!("{name}.sock"));
        let config = priced_config(dir, name, (prices.prompt_per_1k.0, prices.completion_per_1k.0), capacity);
        let enclave = start_enclave_with(&sock, delay_ms, Some(&config));
        let (host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
        TestWorker { enclave: Some(enclave), host: Some(host), url, sock, config, delay_ms }
    }

    /// Restarts the enclave (new keys) behind the same shim.
    pub fn restart_enclave(&mut self) {
        self.enclave.take();
        self.enclave = Some(start_enclave_with(&self.sock, self.delay_ms, Some(&self.config)));
    }

    pub fn kill(&mut self) {
        if let Some(mut h) = self.host.take() {
            let _ = h.child.kill(); // SIGKILL
        }
        self.enclave.take();
    }
}

/// `cocoon-proxy serve` on `port` with its ledger and key in `dir`, the
/// workers given, then `extra`; logs and output are the caller's to set.
pub fn proxy_command(dir: &Path, port: u16, workers: &[&str], extra: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("cocoon-proxy"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--ledger")
        .arg(dir.join("ledger.sqlite"))
        .arg("--account-key")
        .arg(dir.join("proxy.key"))
        .args(["--commission-ppm", &COMMISSION_PPM.to_string()]);
    for w in workers {
        cmd.args(["--worker", w]);
    }
    cmd.args(extra);
    cmd
}

pub fn start_proxy(dir: &Path, workers: &[&str], extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let child = proxy_command(dir, port, workers, &["--reattest-interval", "1"])
        .args(extra)
        .env("COCOON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the proxy");
    wait_for_port(port, "the proxy");
    (Proc { child }, format!("http://127.0.0.1:{port}"))
}

pub fn dev_proxy(dir: &Path, workers: &[&str]) -> (Proc, String) {
    start_proxy(dir, workers, &["--insecure-simulated", "--platform", "simulated"])
}

pub async fn workers_json(proxy: &str) -> Value {
    let (status, body) = get(proxy, "/v1/workers").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub async fn wait_admitted(proxy: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = workers_json(proxy).await;
        let up = v["data"].as_array().unwrap().iter().filter(|w| w["state"] == "up").count();
        if up >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} workers were not admitted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn deposit(dir: &Path, key: &SigningKey, amount: u64) {
    let out = Command::new(workspace_bin("cocoon-proxy"))
        .arg("deposit")
        .arg("--db")
        .arg(dir.join("ledger.sqlite"))
        .args(["--client", &hex::encode(key.verifying_key().to_bytes()), "--amount", &amount.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub fn ledger_json(dir: &Path) -> Value {
    let out = Command::new(workspace_bin("cocoon-proxy"))
        .arg("ledger")
        .arg("--db")
        .arg(dir.join("ledger.sqlite"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits for `workers` admissions, funds client `seed` with `amount` and starts its runner.
pub async fn funded_runner(dir: &Path, proxy: &str, workers: usize, seed: u8, amount: u64) -> (String, HttpClient) {
    wait_admitted(proxy, workers).await;
    let key = client_key(seed);
    deposit(dir, &key, amount);
    (start_runner(proxy, key).await, HttpClient::default())
}

pub fn client_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A client runner for `proxy` on a loopback port; returns its base URL.
pub async fn start_runner(proxy: &str, key: SigningKey) -> String {
    start_runner_with(proxy, key, NanoTon(10_000_000)).await
}

/// [`start_runner`] with the most one request may cost when the app does not say.
pub async fn start_runner_with(proxy: &str, key: SigningKey, max_cost: NanoTon) -> String {
    let runner = Runner::via_proxy(proxy, Policy::insecure_simulated(), EndorsementSources::default(), key, max_cost)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cocoon_client::serve::serve(listener, Arc::new(runner), std::future::pending()));
    url
}

/// Posts JSON to the runner; returns the status and the whole body.
pub async fn post_json(http: &HttpClient, url: &str, path: &str, body: &Value) -> (u16, Vec<u8>) {
    let req = http::Request::post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = http.send(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    (status, body)
}

/// A chat request to the runner with extra headers: the status and the whole body.
pub async fn post_chat_with(http: &HttpClient, url: &str, body: &Value, headers: &[(&str, String)]) -> (u16, Vec<u8>) {
    let mut req = http::Request::post(format!("{url}/v1/chat/completions")).header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = http.send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default())
}

pub fn chat_body(prompt: &str, stream: bool) -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "stream": stream,
           "stream_options": {"include_usage": true}})
}

/// What one answered request reported.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub cost: u64,
    pub worker: String,
}

pub fn expected_cost(prompt: &str) -> u64 {
    let n = prompt.split_whitespace().count() as u32;
    Commission::from_ppm(COMMISSION_PPM).unwrap().charge(PRICES.cost(n, n)).0
}

/// Parses a streamed (SSE) or whole answer from the runner.
pub fn parse_answer(status: u16, body: &[u8], stream: bool) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    if !stream {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("{e}: {text}"))?;
        return Ok(Answer {
            text: v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string(),
            cost: v["cocoon"]["cost_nanoton"].as_u64().ok_or(format!("no cost: {v}"))?,
            worker: v["cocoon"]["worker"].as_str().unwrap_or_default().to_string(),
        });
    }
    let mut answer = Answer { text: String::new(), cost: 0, worker: String::new() };
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
        if !v["error"].is_null() {
            return Err(format!("stream error: {v}"));
        }
        if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
            answer.text.push_str(piece);
        }
        if let Some(c) = v["cocoon"]["cost_nanoton"].as_u64() {
            answer.cost = c;
            answer.worker = v["cocoon"]["worker"].as_str().unwrap_or_default().to_string();
        }
    }
    if !done {
        return Err(format!("stream ended without [DONE]: {text}"));
    }
    Ok(answer)
}

pub async fn ask(http: &HttpClient, runner: &str, prompt: &str, stream: bool) -> Result<Answer, String> {
    let (status, body) = post_json(http, runner, "/v1/chat/completions", &chat_body(prompt, stream)).await;
    parse_answer(status, &body, stream)
}

pub fn prompt_for(i: usize) -> String {
    format!("request number {i} asks about word{} and word{}", i * 7, i % 13)
}

/// Seals a chat request to the worker the proxy routes to; returns the sealed
/// bytes, their content type and the worker id.
pub async fn sealed_request(proxy: &str, prompt: &str) -> (Vec<u8>, String) {
    let http = HttpClient::default();
    let req = http::Request::post(format!("{proxy}/v1/route"))
        .body(Full::new(Bytes::from(json!({"model": MODEL_ID}).to_string())))
        .unwrap();
    let resp = http.send(req).await.unwrap();
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    use base64::Engine as _;
    let evidence = base64::engine::general_purpose::STANDARD.decode(v["evidence"].as_str().unwrap()).unwrap();
    let verified = cocoon_attestation::assess(
        &evidence,
        &Policy::insecure_simulated(),
        None,
        cocoon_client::worker::unix_now(),
        &Default::default(),
    )
    .into_result()
    .unwrap();
    let body = chat_body(prompt, false).to_string().into_bytes();
    let mut inner = cocoon_protocol::bhttp_msg::InnerRequest::post_json("/v1/chat/completions", body);
    inner.stamp(std::time::SystemTime::now());
    let (sealed, _) = cocoon_protocol::ohttp::ClientRequest::new(verified.key_config())
        .unwrap()
        .seal_chunked(&inner.encode())
        .unwrap();
    (sealed, v["worker"]["id"].as_str().unwrap().to_string())
}

pub fn raw_post(host: &str, worker: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: {}\r\n{}: {worker}\r\ncontent-length: {}\r\n",
        media::OHTTP_CHUNKED_REQUEST,
        media::WORKER_HEADER,
        body.len()
    );
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn auth_headers(key: &SigningKey, sealed: &[u8], max_cost: u64) -> Vec<(String, String)> {
    use sha2::Digest;
    let hash: [u8; 32] = sha2::Sha256::digest(sealed).into();
    ClientAuthorization::sign(key, &hash, NanoTon(max_cost))
        .header_values()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
}

/// `POST /v1/route` with `body` as given (it need not be JSON): status and body.
pub async fn post_route(proxy: &str, body: &str) -> (u16, String) {
    let host = proxy.trim_start_matches("http://");
    let request = format!(
        "POST /v1/route HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_http(proxy, request.as_bytes()).await
}

pub fn code_of(body: &str) -> String {
    let json = body.find('{').map(|i| &body[i..]).unwrap_or("");
    let json = json.rfind('}').map(|j| &json[..=j]).unwrap_or("");
    serde_json::from_str::<Value>(json)
        .map(|v| v["error"]["code"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

pub async fn worker_state(proxy: &str, url: &str) -> Value {
    let v = workers_json(proxy).await;
    v["data"].as_array().unwrap().iter().find(|w| w["url"] == url).cloned().unwrap_or(Value::Null)
}

pub fn registry_id(url: &str) -> String {
    use sha2::Digest;
    format!("w-{}", &hex::encode(sha2::Sha256::digest(url.trim_end_matches('/').as_bytes()))[..12])
}

/// Every charge row, as `cocoon-proxy ledger --json --charges` prints it.
pub fn charge_rows_json(dir: &Path) -> Vec<Value> {
    let out = Command::new(workspace_bin("cocoon-proxy"))
        .arg("ledger")
        .arg("--db")
        .arg(dir.join("ledger.sqlite"))
        .args(["--json", "--charges"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["charges"].as_array().unwrap().clone()
}

/// `POST /v1/vouchers` with `body`: the status and the answer's text.
pub async fn post_voucher(proxy: &str, body: &Value) -> (u16, String) {
    let (status, bytes) = post_json(&HttpClient::default(), proxy, "/v1/vouchers", body).await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// [`post_voucher`], its answer as JSON (null when it is not).
pub async fn post_voucher_json(proxy: &str, body: &Value) -> (u16, Value) {
    let (status, text) = post_voucher(proxy, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// How a streamed answer ended, as the app saw it.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Every token, the usage with its cost, `[DONE]`.
    Complete { cost: u64 },
    /// Some tokens, then an OpenAI-style error event, and a clean end.
    ErrorAfterTokens,
    /// Anything else: an error before any token, or a broken connection.
    Broken(String),
}

pub async fn stream_seen(http: &HttpClient, runner: &str, prompt: &str) -> Seen {
    let req = http::Request::post(format!("{runner}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(prompt, true).to_string())))
        .unwrap();
    let resp = match http.send(req).await {
        Ok(r) => r,
        Err(e) => return Seen::Broken(format!("no answer: {e}")),
    };
    let status = resp.status().as_u16();
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Seen::Broken(format!("the connection broke: {e}")),
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Seen::Broken(format!("status {status}: {text}"));
    }
    let (mut tokens, mut cost, mut done, mut error) = (0, None, false, false);
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if !v["error"].is_null() {
            error = true;
        } else if v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()) {
            tokens += 1;
        }
        cost = cost.or(v["cocoon"]["cost_nanoton"].as_u64());
    }
    match (tokens, cost, done, error) {
        (t, Some(cost), true, false) if t > 0 => Seen::Complete { cost },
        (t, _, false, true) if t > 0 => Seen::ErrorAfterTokens,
        _ => Seen::Broken(text),
    }
}

/// `n` streamed requests from `first`, started over `n % 40 × spread_ms`.
pub fn streams(
    http: &HttpClient,
    runner: &str,
    n: usize,
    first: usize,
    spread_ms: u64,
) -> Vec<tokio::task::JoinHandle<Result<Seen, tokio::time::error::Elapsed>>> {
    (0..n)
        .map(|i| {
            let (http, runner) = (http.clone(), runner.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i as u64 % 40) * spread_ms)).await;
                let prompt = prompt_for(first + i);
                tokio::time::timeout(Duration::from_secs(60), stream_seen(&http, &runner, &prompt)).await
            })
        })
        .collect()
}

/// A worker as a client that skips the runner sees it: routed by the proxy,
/// its evidence verified here.
pub async fn routed_worker(proxy: &str, exclude: &[String]) -> cocoon_client::Worker {
    let http = HttpClient::default();
    let req = http::Request::post(format!("{proxy}/v1/route"))
        .body(Full::new(Bytes::from(json!({"model": MODEL_ID, "exclude": exclude}).to_string())))
        .unwrap();
    let resp = http.send(req).await.unwrap();
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    use base64::Engine as _;
    let evidence = base64::engine::general_purpose::STANDARD.decode(v["evidence"].as_str().unwrap()).unwrap();
    let route = cocoon_client::Route::ViaProxy {
        proxy: proxy.to_string(),
        worker_id: v["worker"]["id"].as_str().unwrap().into(),
    };
    cocoon_client::Worker::from_evidence(
        route,
        http,
        &evidence,
        &Policy::insecure_simulated(),
        &EndorsementSources::default(),
    )
    .await
    .unwrap()
}
