//! The worker (host shim and test enclave, real processes on loopback) under
//! a hostile client: replays, stalled and aborted uploads, idle connection
//! floods, upload storms, a thousand verifiers at once, and shutdown while
//! streams are in flight.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cocoon_attestation::Policy;
use cocoon_client::{ChatOptions, Worker};
use cocoon_protocol::bhttp_msg::InnerRequest;
use cocoon_protocol::media;
use cocoon_protocol::ohttp::ClientRequest;
use cocoon_tests::echo_engine::{MODEL_ID, answer_tokens};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The load tests run one at a time: each measures the shim under its own load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dev_policy() -> Policy {
    Policy::insecure_simulated()
}

fn opts() -> ChatOptions {
    ChatOptions { model: MODEL_ID.into(), ..Default::default() }
}

struct Node {
    enclave: Proc,
    host: Proc,
    url: String,
}

fn node(tag: &str, token_delay_ms: u64, host_args: &[&str]) -> Node {
    let dir = temp_dir(tag);
    let sock = dir.join("enclave.sock");
    let enclave = start_enclave(&sock, token_delay_ms);
    let (host, url) = start_host(&format!("unix:{}", sock.display()), host_args);
    Node { enclave, host, url }
}

/// One sealed request as raw HTTP, dated `date` (none: undated).
fn sealed_post(worker: &Worker, host: &str, date: Option<SystemTime>) -> Vec<u8> {
    let body = serde_json::json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "replay me"}]});
    let mut inner = InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes());
    if let Some(d) = date {
        inner.stamp(d);
    }
    let (sealed, _) = ClientRequest::new(worker.verified().key_config()).unwrap().seal(&inner.encode()).unwrap();
    let mut req = format!(
        "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        media::OHTTP_REQUEST,
        sealed.len()
    )
    .into_bytes();
    req.extend(sealed);
    req
}

/// Status, whether a receipt came, and the body.
async fn exchange(url: &str, request: &[u8]) -> (u16, bool, String) {
    let mut s = TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase();
    let receipt = head.contains(&format!("\r\n{}:", media::RECEIPT_HEADER));
    (status, receipt, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stale_and_undated_requests_are_refused_without_generating() {
    let n = node("replay", 0, &[]);
    let host = n.url.trim_start_matches("http://").to_string();
    let worker = Worker::attest(&n.url, &dev_policy(), false).await.unwrap();

    let request = sealed_post(&worker, &host, Some(SystemTime::now()));
    let (status, receipt, body) = exchange(&n.url, &request).await;
    assert_eq!((status, receipt), (200, true), "{body}");
    // The same bytes again, one at a time and then 20 at once: refused, no receipt.
    let (status, receipt, body) = exchange(&n.url, &request).await;
    assert_eq!((status, receipt), (409, false), "{body}");
    assert!(body.contains("already received (a replay)"), "{body}");
    let replays: Vec<_> = (0..20)
        .map(|_| {
            let (url, request) = (n.url.clone(), request.clone());
            tokio::spawn(async move { exchange(&url, &request).await })
        })
        .collect();
    for r in replays {
        let (status, receipt, _) = r.await.unwrap();
        assert_eq!((status, receipt), (409, false));
    }

    let stale = sealed_post(&worker, &host, Some(SystemTime::now() - Duration::from_secs(600)));
    let (status, receipt, body) = exchange(&n.url, &stale).await;
    assert_eq!((status, receipt), (400, false), "{body}");
    assert!(body.contains("s behind the enclave's clock") && body.contains("within 60 s"), "{body}");
    let future = sealed_post(&worker, &host, Some(SystemTime::now() + Duration::from_secs(600)));
    assert_eq!(exchange(&n.url, &future).await.0, 400);
    let (status, _, body) = exchange(&n.url, &sealed_post(&worker, &host, None)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has no date"), "{body}");

    // Honest requests (the client dates each) still go through.
    let out = worker.chat("fresh words", &opts(), |_| {}).await.unwrap();
    assert_eq!(out.text, answer_tokens("fresh words").concat());
}

/// Opens a connection from `source` (a loopback address of its own).
async fn connect_from(source: [u8; 4], url: &str) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(std::net::SocketAddr::from((source, 0)))?;
    s.connect(url.trim_start_matches("http://").parse().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_served_while_stalled_uploads_and_idle_connections_flood_the_shim() {
    let _serial = SERIAL.lock().await;
    let fds = cocoon_runtime::raise_fd_limit();
    assert!(fds >= 6000, "this test opens 5,224 connections; the hard limit on open files is {fds}");
    // 5,224 connections against a table of 3,000: the kernel's listen backlog
    // paces how fast the attackers' connects land, so a table smaller than the
    // flood fills within seconds on a loaded machine.
    let n = node("flood", 0, &["--max-connections", "3000"]);
    let host = n.url.trim_start_matches("http://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    // 1,024 clients that send headers and then no body, from 8 addresses,
    // reconnecting as soon as they are cut off.
    for i in 0..1024u32 {
        let (url, host, stop, cut_off) = (n.url.clone(), host.clone(), stop.clone(), cut_off.clone());
        attackers.push(tokio::spawn(async move {
            let source = [127, 0, 1, 1 + (i % 8) as u8];
            let head = format!(
                "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: {}\r\ncontent-length: 100000\r\n\r\n",
                media::OHTTP_REQUEST
            );
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = connect_from(source, &url).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if s.write_all(head.as_bytes()).await.is_ok() {
                    let mut sink = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut sink)).await;
                    if sink.starts_with(b"HTTP/1.1 408") {
                        cut_off.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // 4,200 connections that send nothing, from 42 addresses, reconnecting
    // 100 ms after each close.
    for i in 0..4200u32 {
        let (url, stop) = (n.url.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let source = [127, 0, 2, 1 + (i % 42) as u8];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = connect_from(source, &url).await {
                    let mut b = [0u8; 1];
                    let _ = tokio::time::timeout(Duration::from_secs(120), s.read(&mut b)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Let the flood build up: the uploads are held open, the idle connections
    // fill the table until new ones displace the longest idle (connects that
    // overflow the listen backlog are retried by the kernel, so this takes seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (uploads, in_flight, metrics) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, metrics) = get(&n.url, "/metrics").await;
        let uploads = metric(&metrics, "cocoon_host_uploads");
        let full = metric(&metrics, "cocoon_host_rejected_total{reason=\"idle_displaced\"}") >= 1.0;
        if (uploads >= 500.0 && full) || Instant::now() > deadline {
            break (uploads, metric(&metrics, "cocoon_host_in_flight"), metrics);
        }
    };
    assert!(
        metric(&metrics, "cocoon_host_rejected_total{reason=\"idle_displaced\"}") >= 1.0,
        "the idle connections never filled the table\n{metrics}"
    );
    assert!(uploads >= 500.0, "uploads gauge reads {uploads} while the flood holds them\n{metrics}");
    assert!(in_flight >= uploads, "in-flight {in_flight} counts every accepted request, uploads {uploads}");

    // A normal client, within a stated bound: 10 s for evidence, a sealed answer and health.
    let started = Instant::now();
    let worker = Worker::attest(&n.url, &dev_policy(), true).await.expect("fresh evidence during the flood");
    let out = worker.chat("still served", &opts(), |_| {}).await.expect("an answer during the flood");
    assert_eq!(out.text, answer_tokens("still served").concat());
    let (status, health) = get(&n.url, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"enclave\":\"ok\""), "{health}");
    let took = started.elapsed();
    eprintln!("during the flood a normal client was attested, answered and saw /healthz in {took:?}");
    assert!(took < Duration::from_secs(10), "the normal client needed {took:?}");

    // The stalled uploads are cut off by the minimum rate (3 s grace), well before 60 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cut_off.load(Ordering::Relaxed) < 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cut_off.load(Ordering::Relaxed) >= 500, "{} stalled uploads cut off", cut_off.load(Ordering::Relaxed));
    let (_, metrics) = get(&n.url, "/metrics").await;
    assert!(metric(&metrics, "cocoon_host_rejected_total{reason=\"body_too_slow\"}") >= 500.0, "{metrics}");
    assert_eq!(metric(&metrics, "cocoon_host_enclave_up"), 1.0, "client misbehaviour is not the enclave's");
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_body_errors_are_4xx_and_leave_the_enclave_healthy() {
    let n = node("bodyerr", 0, &["--max-body", "65536"]);
    let host = n.url.trim_start_matches("http://").to_string();
    assert_eq!(get(&n.url, "/healthz").await.0, 200);
    // Chunked, past the limit, with no length declared.
    let mut s = TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n",
        media::OHTTP_CHUNKED_REQUEST
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = [format!("{:x}\r\n", 16384).into_bytes(), vec![b'a'; 16384], b"\r\n".to_vec()].concat();
    for _ in 0..8 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("exceeds the limit of 65536 bytes"), "{text}");

    // An upload the client abandons half-way.
    let mut s = TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: {}\r\ncontent-length: 1000\r\n\r\n",
        media::OHTTP_REQUEST
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[0u8; 10]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("broke off after 10 bytes"), "{text}");

    // Media types compare per RFC 9110.
    let worker = Worker::attest(&n.url, &dev_policy(), false).await.unwrap();
    let req = sealed_post(&worker, &host, Some(SystemTime::now()));
    let at = find(&req, media::OHTTP_REQUEST.as_bytes()).unwrap();
    let req = [&req[..at], b"MESSAGE/OHTTP-REQ; charset=x", &req[at + media::OHTTP_REQUEST.len()..]].concat();
    let (status, _, body) = exchange(&n.url, &req).await;
    assert_eq!(status, 200, "{body}");

    let (_, metrics) = get(&n.url, "/metrics").await;
    assert_eq!(metric(&metrics, "cocoon_host_enclave_up"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "cocoon_host_rejected_total{reason=\"body_too_large\"}"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "cocoon_host_rejected_total{reason=\"body_aborted\"}"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "cocoon_host_requests_total{endpoint=\"ohttp\",status=\"502\"}"), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "cocoon_host_in_flight"), 0.0, "{metrics}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 1,000 clients each upload 256 KiB in 16 KiB pieces, slowly; returns when all are done.
async fn slow_upload_storm(url: &str) {
    let host = url.trim_start_matches("http://").to_string();
    let tasks: Vec<_> = (0..1000u32)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move {
                let Ok(mut s) = connect_from([127, 0, 3, 1 + (i % 16) as u8], &format!("http://{host}")).await else {
                    return;
                };
                let head = format!(
                    "POST /v1/ohttp HTTP/1.1\r\nhost: {host}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    media::OHTTP_REQUEST,
                    256 << 10
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..16 {
                    if s.write_all(&[0x5au8; 16 << 10]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink)).await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_after_a_slow_upload_storm() {
    let _serial = SERIAL.lock().await;
    cocoon_runtime::raise_fd_limit();
    let n = node("memory", 0, &[]);
    let (shim, enclave) = (n.host.child.id(), n.enclave.child.id());
    // A first storm warms the allocator's and the runtime's caches up.
    slow_upload_storm(&n.url).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = (rss_kib(shim), rss_kib(enclave));
    slow_upload_storm(&n.url).await;
    let peak = (rss_kib(shim), rss_kib(enclave));
    // Trimming runs every 2 s after activity.
    let deadline = Instant::now() + Duration::from_secs(15);
    let within = |now: u64, base: u64| now as f64 <= base as f64 * 1.10;
    let mut after = (rss_kib(shim), rss_kib(enclave));
    while !(within(after.0, before.0) && within(after.1, before.1)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = (rss_kib(shim), rss_kib(enclave));
    }
    eprintln!("RSS KiB (shim, enclave): before {before:?}, peak {peak:?}, after {after:?}");
    assert!(peak.0 > before.0, "the storm did not load the shim: {peak:?} vs {before:?}");
    assert!(within(after.0, before.0), "shim RSS {} KiB, {} KiB before the storm", after.0, before.0);
    assert!(within(after.1, before.1), "enclave RSS {} KiB, {} KiB before the storm", after.1, before.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fresh_evidence_requests_share_few_hardware_reports() {
    let _serial = SERIAL.lock().await;
    cocoon_runtime::raise_fd_limit();
    let n = node("batch", 0, &[]);
    let http = cocoon_client::http::HttpClient::default();
    let sources = cocoon_client::EndorsementSources::default();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (http, url, sources) = (http.clone(), n.url.clone(), sources.clone());
            tokio::spawn(async move {
                cocoon_client::worker::fetch_verified(&http, &url, &dev_policy(), &sources, true).await
            })
        })
        .collect();
    let mut docs = Vec::new();
    for t in tasks {
        let (doc, verified) = t.await.unwrap().expect("fresh evidence for each of 1,000 verifiers");
        let nonce_rule = verified.rules().iter().find(|r| r.rule == "nonce").unwrap();
        assert!(nonce_rule.passed);
        docs.push(doc);
    }
    let (decoded, _) = cocoon_protocol::EvidenceDocument::decode(&docs[0]).unwrap();
    let batched: Vec<_> =
        docs.iter().filter_map(|d| cocoon_protocol::EvidenceDocument::decode(d).unwrap().0.nonce_proof).collect();
    assert!(batched.len() > 900, "{} of 1,000 answers were batched", batched.len());
    let roots: std::collections::HashSet<_> =
        docs.iter().map(|d| cocoon_protocol::EvidenceDocument::decode(d).unwrap().0.nonce).collect();
    assert!(roots.len() < 100, "{} hardware reports for 1,000 verifiers", roots.len());
    // A proof moved to another nonce is refused.
    let other = [0xee; 32];
    let e = cocoon_attestation::verify_evidence(
        &docs[0],
        &dev_policy(),
        Some(&other),
        decoded_issued(&decoded),
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("does not lead from it to the signed root") || e.to_string().contains("nonce"),
        "{e}"
    );
}

fn decoded_issued(doc: &cocoon_protocol::EvidenceDocument) -> u64 {
    cocoon_protocol::Claims::decode(&doc.claims).unwrap().issued_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_every_started_stream_finish_and_exits_cleanly() {
    let _serial = SERIAL.lock().await;
    let mut n = node("sigterm", 100, &["--grace", "20"]);
    let worker = Arc::new(Worker::attest(&n.url, &dev_policy(), false).await.unwrap());
    let started = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (worker, started) = (worker.clone(), started.clone());
            tokio::spawn(async move {
                let prompt = format!("stream {i} of fifty here");
                let mut first = true;
                let out = worker
                    .chat(&prompt, &opts(), |_| {
                        if std::mem::take(&mut first) {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                    .await;
                (prompt, out)
            })
        })
        .collect();
    wait_until("50 streams to start", || started.load(Ordering::SeqCst) == 50);
    let signalled = Instant::now();
    for pid in [n.host.child.id(), n.enclave.child.id()] {
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused while the streams drain.
    assert!(TcpStream::connect(n.url.trim_start_matches("http://")).await.is_err(), "the shim still accepts");
    for t in tasks {
        let (prompt, out) = t.await.unwrap();
        let out = out.unwrap_or_else(|e| panic!("{prompt}: {e}"));
        assert_eq!(out.text, answer_tokens(&prompt).concat());
        assert_eq!(out.receipt.completion_tokens, 5);
    }
    for (name, child) in [("shim", &mut n.host.child), ("enclave", &mut n.enclave.child)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the {name} did not exit within its grace period");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "the {name} exited with {status}");
    }
    assert!(signalled.elapsed() < Duration::from_secs(20));
}
