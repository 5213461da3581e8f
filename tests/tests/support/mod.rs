//! Processes and network helpers for end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use cocoon_tests::wait::{free_port, wait_for_port, wait_until};

pub mod chain;
pub mod net;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A workspace binary next to the test executable (cargo builds them for `cargo test --workspace`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --bins` first", bin.display());
    bin
}

pub fn test_enclave_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cocoon-test-enclave"))
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn start_enclave(socket: &Path, token_delay_ms: u64) -> Proc {
    start_enclave_with(socket, token_delay_ms, None)
}

/// A worker's static config: prices (nanoTON per 1,000 prompt and completion
/// tokens), payout address `UQ-{name}`, and `capacity` as both batch and queue.
pub fn priced_config(dir: &Path, name: &str, prices: (u64, u64), capacity: u32) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[model]\nmax_batch = {capacity}\nmax_queue = {capacity}\n\n[pricing]\nprompt_per_1k = {}\n\
         completion_per_1k = {}\npayout_address = \"UQ-{name}\"\n",
        prices.0, prices.1
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The test enclave with a static config (prices, payout address, capacity).
pub fn start_enclave_with(socket: &Path, token_delay_ms: u64, config: Option<&Path>) -> Proc {
    start_enclave_serving(socket, token_delay_ms, config, cocoon_tests::echo_engine::MODEL_ID)
}

/// [`start_enclave_with`] serving the echo engine under another model id (another digest).
pub fn start_enclave_serving(socket: &Path, token_delay_ms: u64, config: Option<&Path>, model: &str) -> Proc {
    start_enclave_prefilling(socket, token_delay_ms, 0, config, model)
}

/// [`start_enclave_serving`] whose engine pauses `prefill_ms` before each answer's first token.
pub fn start_enclave_prefilling(
    socket: &Path,
    token_delay_ms: u64,
    prefill_ms: u64,
    config: Option<&Path>,
    model: &str,
) -> Proc {
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(test_enclave_bin());
    cmd.env("COCOON_TEST_MODEL", model).env("COCOON_TEST_PREFILL_DELAY_MS", prefill_ms.to_string());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let child = cmd
        .args(["--listen", &format!("unix:{}", socket.display()), "--platform", "simulated", "--insecure-simulated"])
        .env("COCOON_TEST_TOKEN_DELAY_MS", token_delay_ms.to_string())
        .env("COCOON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the test enclave");
    wait_until(&format!("the enclave at {}", socket.display()), || {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
    });
    Proc { child }
}

pub fn start_host(enclave: &str, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(workspace_bin("cocoon-host"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--enclave", enclave])
        .args(extra)
        .env("COCOON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the host shim");
    wait_for_port(port, "the host shim");
    (Proc { child }, format!("http://127.0.0.1:{port}"))
}

/// Both directions of every connection through a [`Relay`], as bytes on the wire.
#[derive(Clone, Default)]
pub struct Recording(pub Arc<Mutex<Vec<u8>>>);

impl Recording {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

/// A TCP relay in front of the host shim that records what crosses it and,
/// when asked, flips one byte inside the first sealed (`message/ohttp-res`) body.
pub struct Relay {
    pub url: String,
    pub recording: Recording,
}

pub async fn start_relay(target: &str, flip_sealed_response: bool) -> Relay {
    let target = target.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recording = Recording::default();
    let rec = recording.clone();
    let flipped = Arc::new(Mutex::new(!flip_sealed_response));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else { continue };
            let (rec, flipped) = (rec.clone(), flipped.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let rec_up = rec.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        rec_up.0.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let start = seen.len();
                    seen.extend_from_slice(&buf[..n]);
                    {
                        let mut done = flipped.lock().unwrap();
                        if !*done && let Some(at) = sealed_body_offset(&seen) {
                            let target = at + 40;
                            if target >= start && target < start + n {
                                buf[target - start] ^= 0x20;
                                *done = true;
                            }
                        }
                    }
                    rec.0.lock().unwrap().extend_from_slice(&buf[..n]);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = up.await;
            });
        }
    });
    Relay { url, recording }
}

/// Offset of the body of the first response whose type is `message/ohttp-res`.
fn sealed_body_offset(stream: &[u8]) -> Option<usize> {
    let ct = find(stream, b"content-type: message/ohttp-res\r\n")?;
    Some(ct + find(&stream[ct..], b"\r\n\r\n")? + 4)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A raw HTTP/1.1 request; returns the status code and body text.
pub async fn raw_http(url: &str, request: &[u8]) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub async fn get(url: &str, path: &str) -> (u16, String) {
    let host = url.trim_start_matches("http://");
    raw_http(url, format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes()).await
}

/// The local emulated TON chain (`contracts/chain/server.js`: @ton/sandbox
/// behind the toncenter v2 API), stopped when dropped; `.1` is its API root.
/// Needs Node and `contracts/node_modules` (`make contracts-deps`).
pub struct LocalChain(pub Child, pub String);

impl Drop for LocalChain {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_local_chain() -> LocalChain {
    start_local_chain_with(&[])
}

/// [`start_local_chain`] with the chain server's options (`--global-id -3`: testnet's id).
pub fn start_local_chain_with(args: &[&str]) -> LocalChain {
    use std::io::BufRead;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts");
    assert!(
        dir.join("node_modules/@ton/sandbox").is_dir(),
        "contracts/node_modules is missing: run `make contracts-deps`"
    );
    let mut child = Command::new("node")
        .args(["chain/server.js", "--port", "0"])
        .args(args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = format!("{}/api/v2", v["url"].as_str().unwrap());
    LocalChain(child, url)
}

/// An Ed25519 seed file of `[seed; 32]`, mode 0600, as `cocoon` and `cocoon-proxy` read keys.
pub fn key_file(dir: &Path, name: &str, seed: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, hex::encode([seed; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A TCP relay in front of `target` that replaces `from` with `to` (same
/// length) in what clients send: a dishonest host rewriting request headers.
pub async fn rewriting_relay(target: &str, from: &'static [u8], to: &'static [u8]) -> String {
    assert_eq!(from.len(), to.len(), "a rewrite keeps lengths, so bodies stay framed");
    let target = target.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else { continue };
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut at = 0;
                    while let Some(i) = find(&buf[at..n], from) {
                        buf[at + i..at + i + to.len()].copy_from_slice(to);
                        at += i + to.len();
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            });
        }
    });
    url
}
