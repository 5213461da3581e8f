//! The network end to end, with real processes on loopback: test workers
//! (enclave + host shim), `cocoon-proxy` with its SQLite ledger, and the
//! client runner (`cocoon serve`'s library) in the test.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use cocoon_attestation::Policy;
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_client::serve::Runner;
use cocoon_protocol::{Commission, NanoTon, media};
use cocoon_tests::echo_engine::{MODEL_ID, answer_tokens};
use support::net::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_spreads_answers_are_metered_and_the_ledger_balances() {
    let dir = temp_dir("net-ledger");
    let a = TestWorker::start(&dir, "a", 2);
    let b = TestWorker::start(&dir, "b", 2);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url, &b.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 2, 1, 1_000_000_000).await;

    let n = 60;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, runner) = (http.clone(), runner.clone());
            tokio::spawn(async move { (i, ask(&http, &runner, &prompt_for(i), i % 2 == 0).await) })
        })
        .collect();
    let mut expected_total = 0;
    let mut per_worker = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let (i, answer) = t.await.unwrap();
        let answer = answer.unwrap();
        assert_eq!(answer.text, answer_tokens(&prompt_for(i)).concat());
        assert_eq!(answer.cost, expected_cost(&prompt_for(i)), "request {i}");
        expected_total += answer.cost;
        *per_worker.entry(answer.worker).or_default() += 1;
    }
    assert_eq!(per_worker.len(), 2, "both workers got traffic: {per_worker:?}");
    assert!(per_worker.values().all(|&c| c >= n / 10), "load spread: {per_worker:?}");

    let ledger = ledger_json(&dir);
    let t = &ledger["totals"];
    assert_eq!(t["charges"], n as u64);
    assert_eq!(t["charged"].as_u64().unwrap(), expected_total);
    let earnings = t["worker_earnings"].as_u64().unwrap();
    let commission = t["commission"].as_u64().unwrap();
    assert_eq!(earnings + commission, expected_total, "charged = worker earnings + commission");
    let mut expected_commission = 0;
    for i in 0..n {
        let words = prompt_for(i).split_whitespace().count() as u32;
        expected_commission += Commission::from_ppm(COMMISSION_PPM).unwrap().on(PRICES.cost(words, words)).0;
    }
    assert_eq!(commission, expected_commission, "commission exact to the nanoTON");
    assert_eq!(ledger["accounts"][0]["balance"].as_i64().unwrap(), 1_000_000_000 - expected_total as i64);
    let payouts: Vec<_> = ledger["workers"].as_array().unwrap().iter().map(|w| w["payout_address"].clone()).collect();
    assert!(payouts.contains(&json!("UQ-a")) && payouts.contains(&json!("UQ-b")), "{payouts:?}");

    // The models endpoint lists what the proxy's workers serve.
    let (status, body) = get(&runner, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["data"][0]["id"], MODEL_ID);
    // A model nobody serves is a clear 404.
    let mut other = chat_body("a b", false);
    other["model"] = json!("no-such-model");
    let (status, body) = post_json(&http, &runner, "/v1/chat/completions", &other).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("model_not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_each_with_its_own_error_and_nothing_is_charged() {
    let dir = temp_dir("net-bad");
    let a = TestWorker::start(&dir, "a", 0);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url]);
    wait_admitted(&proxy, 1).await;
    let key = client_key(2);
    deposit(&dir, &key, 1_000_000);
    let host = proxy.trim_start_matches("http://").to_string();

    let (sealed, worker) = sealed_request(&proxy, "x y z").await;
    // Unsigned.
    let (status, body) = raw_http(&proxy, &raw_post(&host, &worker, &[], &sealed)).await;
    assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"), "{body}");
    // Signed by someone else's key over another request's hash.
    let mut wrong = auth_headers(&key, b"another request", 100_000);
    wrong[0].1 = hex::encode(key.verifying_key().to_bytes());
    let (status, body) = raw_http(&proxy, &raw_post(&host, &worker, &wrong, &sealed)).await;
    assert_eq!((status, code_of(&body).as_str()), (401, "bad_signature"), "{body}");
    // A raised maximum cost breaks the signature too.
    let mut raised = auth_headers(&key, &sealed, 100_000);
    raised[1].1 = "100001".into();
    let (status, body) = raw_http(&proxy, &raw_post(&host, &worker, &raised, &sealed)).await;
    assert_eq!((status, code_of(&body).as_str()), (401, "bad_signature"), "{body}");
    // More than the account holds.
    let (status, body) =
        raw_http(&proxy, &raw_post(&host, &worker, &auth_headers(&key, &sealed, 2_000_000), &sealed)).await;
    assert_eq!((status, code_of(&body).as_str()), (402, "insufficient_funds"), "{body}");
    // A good one goes through, once; the same bytes again are refused.
    let (sealed, worker) = sealed_request(&proxy, "x y z").await;
    let good = raw_post(&host, &worker, &auth_headers(&key, &sealed, 100_000), &sealed);
    // Media types compare case-insensitively and may carry parameters (RFC 9110).
    let head_end = find(&good, b"\r\n\r\n").unwrap();
    let head = String::from_utf8(good[..head_end].to_vec())
        .unwrap()
        .replace(media::OHTTP_CHUNKED_REQUEST, "MESSAGE/OHTTP-CHUNKED-REQ; charset=x");
    let good = [head.as_bytes(), &good[head_end..]].concat();
    let (status, _) = raw_http(&proxy, &good).await;
    assert_eq!(status, 200);
    let (status, body) = raw_http(&proxy, &good).await;
    assert_eq!((status, code_of(&body).as_str()), (409, "replayed_request"), "{body}");
    // An unknown worker, an oversized body, an oversized header.
    let (status, body) = raw_http(&proxy, &raw_post(&host, "w-nobody", &auth_headers(&key, b"b", 1), b"b")).await;
    assert_eq!((status, code_of(&body).as_str()), (404, "unknown_worker"), "{body}");
    let big = vec![0u8; (1 << 20) + 1];
    let (status, _) = raw_http(&proxy, &raw_post(&host, &worker, &auth_headers(&key, &big, 1), &big)).await;
    assert_eq!(status, 413);
    let huge = vec![("x-filler".to_string(), "a".repeat(40_000))];
    let (status, _) = raw_http(&proxy, &raw_post(&host, &worker, &huge, b"b")).await;
    assert_eq!(status, 431);
    let (status, body) = post_route(&proxy, "not json!").await;
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid_json"), "{body}");
    // A client whose policy wants GPUs of a chip gets no worker without verified GPUs.
    let (status, body) = post_route(&proxy, &json!({"model": MODEL_ID, "gpu": ["GH100"]}).to_string()).await;
    assert_eq!((status, code_of(&body).as_str()), (503, "no_worker_available"), "{body}");
    assert!(body.contains("with verified GPUs of GH100"), "{body}");
    assert_eq!(workers_json(&proxy).await["data"][0]["gpus"], json!([]));

    // Only the good request was charged, and the proxy still serves.
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"], 1, "{ledger}");
    let (status, _) = get(&proxy, "/healthz").await;
    assert_eq!(status, 200);
    let (_, metrics) = get(&proxy, "/metrics").await;
    for reason in ["unauthorized", "bad_signature", "insufficient_funds", "replayed_request"] {
        assert!(metrics.contains(&format!("reason=\"{reason}\"")), "{reason} counted: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_is_failed_over_and_nothing_is_charged_without_a_receipt() {
    let dir = temp_dir("net-failover");
    let a = TestWorker::start(&dir, "a", 5);
    let mut b = TestWorker::start(&dir, "b", 5);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url, &b.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 2, 3, 10_000_000_000).await;

    let n = 200;
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, runner) = (http.clone(), runner.clone());
            tokio::spawn(async move {
                // Requests keep coming while the worker dies.
                tokio::time::sleep(Duration::from_millis((i as u64 % 50) * 10)).await;
                let r = tokio::time::timeout(Duration::from_secs(60), ask(&http, &runner, &prompt_for(i), i % 2 == 0))
                    .await;
                (i, r)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.kill();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut charged = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r.expect("no request hangs") {
            Ok(answer) => {
                assert_eq!(answer.text, answer_tokens(&prompt_for(i)).concat());
                ok += 1;
                charged += answer.cost;
            }
            Err(e) => {
                // Only a response that had started may fail, and it says why.
                assert!(!e.is_empty());
                if failed < 3 {
                    eprintln!("request {i} failed: {e}");
                }
                failed += 1;
            }
        }
    }
    eprintln!("{ok} completed, {failed} failed of {n} in {:?}", started.elapsed());
    assert!(ok >= n as u64 - 40, "{ok} completed, {failed} failed of {n} in {:?}", started.elapsed());
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"].as_u64().unwrap(), ok, "charged exactly the completed answers");
    assert_eq!(ledger["totals"]["charged"].as_u64().unwrap(), charged);
    let (_, metrics) = get(&proxy, "/metrics").await;
    assert!(metrics.contains("cocoon_proxy_failovers_total"), "{metrics}");
}

/// A worker SIGKILLed under 40 streamed requests through `cocoon serve`, after
/// its streams began (the enclave sends the role chunk at once) but before
/// its first token: every request completes on the other worker, unseen by
/// the app, and is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_before_its_first_token_is_replaced_unseen() {
    let dir = temp_dir("net-unseen");
    // A 300 ms prefill: streams begin at once and show their first token after it.
    let a = TestWorker::prefilling(&dir, "a", 5, 4, 300);
    let mut b = TestWorker::prefilling(&dir, "b", 5, 4, 300);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url, &b.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 2, 5, 10_000_000_000).await;
    // Both workers' evidence verified once, so that the burst starts at once.
    let mut charged = 0;
    for i in 0..4 {
        let Seen::Complete { cost } = stream_seen(&http, &runner, &prompt_for(i)).await else { panic!("warm-up") };
        charged += cost;
    }
    let tasks = streams(&http, &runner, 40, 100, 0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.kill();
    for t in tasks {
        match t.await.unwrap().expect("no request hangs") {
            Seen::Complete { cost } => charged += cost,
            other => panic!("a request whose worker died before its first token failed: {other:?}"),
        }
    }
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"].as_u64().unwrap(), 4 + 40, "charged once per answer");
    assert_eq!(ledger["totals"]["charged"].as_u64().unwrap(), charged);
    drop(a);
}

/// A worker SIGKILLed under 200 streamed requests with tokens flowing: a
/// request that had shown tokens ends with an error event (never a broken
/// connection); every other one completes, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_stream_ends_only_its_started_streams_with_an_error_event() {
    let dir = temp_dir("net-midstream");
    let a = TestWorker::with_capacity(&dir, "a", 20, 4);
    let mut b = TestWorker::with_capacity(&dir, "b", 20, 4);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url, &b.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 2, 6, 10_000_000_000).await;
    let tasks = streams(&http, &runner, 200, 0, 10);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let at_b = worker_state(&proxy, &b.url).await["in_flight"].as_u64().unwrap();
    b.kill();
    let (mut complete, mut after_tokens, mut charged) = (0u64, 0u64, 0u64);
    for t in tasks {
        match t.await.unwrap().expect("no request hangs") {
            Seen::Complete { cost } => {
                complete += 1;
                charged += cost;
            }
            Seen::ErrorAfterTokens => after_tokens += 1,
            Seen::Broken(what) => panic!("a request failed where the app saw no token, or broke: {what}"),
        }
    }
    eprintln!("{complete} completed, {after_tokens} ended with an error after tokens, of 200");
    // What the killed worker was generating (a few more may have reached it
    // between the count and the kill).
    assert!(after_tokens <= at_b + 4, "{after_tokens} ended after tokens; the worker had {at_b} in flight");
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"].as_u64().unwrap(), complete, "charged once per completed answer");
    assert_eq!(ledger["totals"]["charged"].as_u64().unwrap(), charged);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_is_reattested_with_its_new_keys() {
    let dir = temp_dir("net-restart");
    let mut a = TestWorker::start(&dir, "a", 0);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 1, 4, 1_000_000_000).await;
    ask(&http, &runner, "before the restart", true).await.unwrap();
    let before = workers_json(&proxy).await["data"][0]["evidence_sha256"].clone();
    a.restart_enclave();
    // The next request was sealed to old keys or new: either way it is answered.
    let answer = ask(&http, &runner, "after the restart", false).await.unwrap();
    assert_eq!(answer.text, "RESTART THE AFTER ");
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers_json(&proxy).await["data"][0]["evidence_sha256"] == before {
        assert!(Instant::now() < deadline, "the proxy did not re-attest the restarted worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_fail_the_proxy_policy_are_never_admitted() {
    let dir = temp_dir("net-policy");
    let a = TestWorker::start(&dir, "a", 0);
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, format!("required_model_digest = \"{}\"\n", "ab".repeat(32))).unwrap();
    let (_proxy, proxy) = start_proxy(
        &dir,
        &[&a.url],
        &["--insecure-simulated", "--platform", "simulated", "--policy", policy.to_str().unwrap()],
    );
    let host = proxy.trim_start_matches("http://");
    let join = json!({"url": a.url}).to_string();
    let (status, body) = raw_http(
        &proxy,
        format!(
            "POST /v1/workers HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{join}",
            join.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("required_model_digest"), "{body}");
    // Neither the configured worker nor the one that asked to join is listed or routed to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(workers_json(&proxy).await["data"].as_array().unwrap().len(), 0);
    let (status, body) = post_route(&proxy, &json!({"model": MODEL_ID}).to_string()).await;
    assert_eq!((status, code_of(&body).as_str()), (404, "model_not_found"), "{body}");
}

/// What a dishonest host in front of a worker does to receipt trailers.
const HONEST: u8 = 0;
/// Flips one character of every receipt: a forged signature.
const FLIP: u8 = 1;
/// Keeps the first receipt it sees and puts it on every later answer: a
/// genuine receipt, for another request.
const REPLAY_FIRST: u8 = 2;

/// A relay in front of a worker's shim that rewrites receipt trailers as `mode` says.
async fn receipt_tampering_relay(target: &str, mode: Arc<std::sync::atomic::AtomicU8>) -> String {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = target.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let first: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
            let (mode, first) = (mode.clone(), first.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let marker = b"cocoon-receipt: ";
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    let mut out = Vec::new();
                    loop {
                        match find(&pending, marker) {
                            Some(at) => {
                                let start = at + marker.len();
                                let Some(len) = find(&pending[start..], b"\r\n") else {
                                    out.extend(pending.drain(..at));
                                    break;
                                };
                                let mut value = pending[start..start + len].to_vec();
                                match mode.load(Ordering::Relaxed) {
                                    FLIP => value[20] = if value[20] == b'A' { b'B' } else { b'A' },
                                    REPLAY_FIRST => {
                                        let mut f = first.lock().unwrap();
                                        match &*f {
                                            None => *f = Some(value.clone()),
                                            Some(old) if old.len() == value.len() => value = old.clone(),
                                            Some(_) => value[20] ^= 1,
                                        }
                                    }
                                    _ => {}
                                }
                                out.extend_from_slice(&pending[..start]);
                                out.extend_from_slice(&value);
                                pending.drain(..start + len);
                            }
                            None => {
                                // Hold back only what may be the start of a marker.
                                let keep = (1..marker.len().min(pending.len() + 1))
                                    .rev()
                                    .find(|&k| pending.ends_with(&marker[..k]))
                                    .unwrap_or(0);
                                out.extend(pending.drain(..pending.len() - keep));
                                break;
                            }
                        }
                    }
                    if cw.write_all(&out).await.is_err() {
                        break;
                    }
                }
                let _ = cw.write_all(&pending).await;
            });
        }
    });
    url
}

fn write_proxy_config(dir: &Path) -> PathBuf {
    let path = dir.join("proxy.toml");
    // Long enough that the quarantine outlasts two bursts on a loaded machine.
    std::fs::write(&path, "[reputation]\nhalf_life_s = 2.0\nquarantine_s = 6.0\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_receipts_quarantine_a_worker_until_it_recovers() {
    use std::sync::atomic::{AtomicU8, Ordering};
    let dir = temp_dir("net-forged");
    let a = TestWorker::start(&dir, "a", 0);
    let b = TestWorker::start(&dir, "b", 0);
    let tamper = Arc::new(AtomicU8::new(FLIP));
    let b_url = receipt_tampering_relay(&b.url, tamper.clone()).await;
    let config = write_proxy_config(&dir);
    let (_proxy, proxy) = start_proxy(
        &dir,
        &[&a.url, &b_url],
        &["--insecure-simulated", "--platform", "simulated", "--config", config.to_str().unwrap()],
    );
    let (runner, http) = funded_runner(&dir, &proxy, 2, 5, 1_000_000_000).await;

    // Every answer B gives carries a forged receipt: the proxy cuts it off,
    // charges nobody, and quarantines B after the first one.
    let burst = |from: usize, n: usize| {
        let (http, runner) = (http.clone(), runner.clone());
        async move {
            let tasks: Vec<_> = (from..from + n)
                .map(|i| {
                    let (http, runner) = (http.clone(), runner.clone());
                    tokio::spawn(async move { (i, ask(&http, &runner, &prompt_for(i), i % 2 == 0).await) })
                })
                .collect();
            let mut refused = 0u64;
            for t in tasks {
                match t.await.unwrap() {
                    (i, Ok(answer)) => assert_eq!(answer.text, answer_tokens(&prompt_for(i)).concat()),
                    (_, Err(_)) => refused += 1,
                }
            }
            refused
        }
    };
    let refused = burst(0, 40).await;
    let state = worker_state(&proxy, &b_url).await;
    assert!(refused >= 1, "B answered nothing: {state}");
    assert_eq!(state["state"], "quarantined", "{state}");
    assert!(state["reputation"]["bad_receipts"].as_u64().unwrap() >= 1);
    assert_eq!(burst(40, 40).await, 0, "a quarantined worker gets no traffic");
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"].as_u64().unwrap(), 80 - refused, "forged receipts are never charged");
    assert!(ledger["workers"].as_array().unwrap().iter().all(|w| w["worker_url"] != json!(b_url)), "{ledger}");

    // B's host behaves again; once the quarantine is over it wins traffic back.
    tamper.store(HONEST, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker_state(&proxy, &b_url).await["state"] != "up" {
        assert!(Instant::now() < deadline, "the quarantine did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (http, runner) = (http.clone(), runner.clone());
            tokio::spawn(async move { ask(&http, &runner, &prompt_for(100 + i), true).await })
        })
        .collect();
    let mut on_b = 0;
    for t in tasks {
        let answer = t.await.unwrap().unwrap();
        if answer.worker == registry_id(&b_url) {
            on_b += 1;
        }
    }
    assert!(on_b > 0, "the recovered worker got no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_genuine_receipt_for_another_request_is_refused() {
    use std::sync::atomic::AtomicU8;
    let dir = temp_dir("net-swapped");
    let a = TestWorker::start(&dir, "a", 0);
    let b = TestWorker::start(&dir, "b", 0);
    let b_url = receipt_tampering_relay(&b.url, Arc::new(AtomicU8::new(REPLAY_FIRST))).await;
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url, &b_url]);
    let (runner, http) = funded_runner(&dir, &proxy, 2, 10, 1_000_000_000).await;
    let mut ok = 0u64;
    for round in 0..3 {
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let (http, runner) = (http.clone(), runner.clone());
                tokio::spawn(async move { ask(&http, &runner, &prompt_for(round * 100 + i), true).await })
            })
            .collect();
        for t in tasks {
            ok += t.await.unwrap().is_ok() as u64;
        }
    }
    let state = worker_state(&proxy, &b_url).await;
    assert_eq!(state["state"], "quarantined", "{state}");
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"].as_u64().unwrap(), ok, "only verified receipts are charged");
    let b_credit = ledger["workers"].as_array().unwrap().iter().find(|w| w["worker_url"] == json!(b_url)).cloned();
    // B's first answer carried its own receipt; every later one a copy of it, refused.
    assert!(b_credit.is_none_or(|w| w["requests"] == 1), "{ledger}");
    assert!(ok < 90, "B's answers with the copied receipt were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_gets_less_traffic() {
    let dir = temp_dir("net-slow");
    let fast = TestWorker::start(&dir, "fast", 0);
    let slow = TestWorker::start(&dir, "slow", 40);
    let (_proxy, proxy) = dev_proxy(&dir, &[&fast.url, &slow.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 2, 6, 1_000_000_000).await;
    let mut on_fast = 0;
    for i in 0..30 {
        // Whole answers: the first byte comes after generation, so it measures the worker's speed.
        let answer = ask(&http, &runner, &prompt_for(i), false).await.unwrap();
        if answer.worker == registry_id(&fast.url) {
            on_fast += 1;
        }
    }
    assert!(on_fast >= 25, "the fast worker answered {on_fast} of 30");
    let slow_state = worker_state(&proxy, &slow.url).await;
    let fast_state = worker_state(&proxy, &fast.url).await;
    assert!(
        slow_state["reputation"]["ttfb_ms"].as_f64().unwrap() > fast_state["reputation"]["ttfb_ms"].as_f64().unwrap(),
        "{slow_state} {fast_state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_between_the_parties_see_neither_prompt_nor_answer() {
    let dir = temp_dir("net-privacy");
    let a = TestWorker::start(&dir, "a", 0);
    let to_worker = start_relay(&a.url, false).await;
    let (_proxy, proxy) = dev_proxy(&dir, &[&to_worker.url]);
    wait_admitted(&proxy, 1).await;
    let to_proxy = start_relay(&proxy, false).await;
    let key = client_key(7);
    deposit(&dir, &key, 1_000_000_000);
    let runner = start_runner(&to_proxy.url, key).await;
    let http = HttpClient::default();
    let prompt = "confidential zebra marmalade quartz";
    for stream in [true, false] {
        let answer = ask(&http, &runner, prompt, stream).await.unwrap();
        assert_eq!(answer.text, answer_tokens(prompt).concat());
    }
    for (name, wire) in
        [("client runner -> proxy", to_proxy.recording.bytes()), ("proxy -> worker", to_worker.recording.bytes())]
    {
        assert!(find(&wire, b"message/ohttp-chunked-req").is_some(), "{name}: the relay saw the sealed exchange");
        for secret in prompt.split_whitespace().flat_map(|w| [w.to_string(), w.to_uppercase()]) {
            assert!(find(&wire, secret.as_bytes()).is_none(), "{name}: {secret:?} crossed in clear");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_killed_under_load_loses_no_acknowledged_charge_and_charges_none_twice() {
    let dir = temp_dir("net-crash");
    let workers = [TestWorker::with_capacity(&dir, "a", 1, 256), TestWorker::with_capacity(&dir, "b", 1, 256)];
    let urls: Vec<&str> = workers.iter().map(|w| w.url.as_str()).collect();
    let port = free_port();
    let proxy_args = |port: u16| {
        let mut cmd = proxy_command(&dir, port, &urls, &["--insecure-simulated", "--platform", "simulated"]);
        cmd.env("COCOON_LOG", "error").stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    let mut proxy = Proc { child: proxy_args(port).spawn().unwrap() };
    wait_for_port(port, "the proxy");
    let proxy_url = format!("http://127.0.0.1:{port}");
    let (runner, http) = funded_runner(&dir, &proxy_url, 2, 8, 100_000_000_000).await;

    let n = 1000;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, runner, done) = (http.clone(), runner.clone(), done.clone());
            tokio::spawn(async move {
                let body = chat_body(&prompt_for(i), true);
                let (status, body) = post_json(&http, &runner, "/v1/chat/completions", &body).await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let text = String::from_utf8_lossy(&body).into_owned();
                // An acknowledged charge: the runner checked the proxy's charge trailer.
                let hash = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find_map(|v| v["cocoon"]["receipt"]["request_hash"].as_str().map(str::to_owned));
                (i, status, hash, v_cost(&text))
            })
        })
        .collect();
    // Kill the proxy once a good share has completed, while the rest are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(std::sync::atomic::Ordering::Relaxed) < n / 3 {
        assert!(Instant::now() < deadline, "requests did not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.child.kill().unwrap(); // SIGKILL
    let _ = proxy.child.wait();
    let mut acked = std::collections::BTreeMap::new();
    for t in tasks {
        let (_, _, hash, cost) =
            tokio::time::timeout(Duration::from_secs(120), t).await.expect("no request hangs").unwrap();
        if let (Some(h), Some(c)) = (hash, cost) {
            acked.insert(h, c);
        }
    }
    assert!(acked.len() >= n / 3 - 50, "{} acknowledged", acked.len());

    // Restarted on the same ledger: every acknowledged charge is there, once.
    let _proxy = Proc { child: proxy_args(port).spawn().unwrap() };
    wait_for_port(port, "the restarted proxy");
    let ledger = ledger_json(&dir);
    let charges = ledger["totals"]["charges"].as_u64().unwrap() as usize;
    assert!(charges >= acked.len(), "{charges} charges in the ledger, {} acknowledged", acked.len());
    let rows = charge_rows(&dir);
    for (hash, cost) in &acked {
        assert_eq!(rows.get(hash), Some(cost), "acknowledged charge {hash} lost or changed");
    }
    let sum: u64 = rows.values().sum();
    assert_eq!(ledger["totals"]["charged"].as_u64().unwrap(), sum);
    assert_eq!(
        ledger["totals"]["worker_earnings"].as_u64().unwrap() + ledger["totals"]["commission"].as_u64().unwrap(),
        sum
    );
    // And it serves again.
    wait_admitted(&proxy_url, 2).await;
    let answer = ask(&http, &runner, "after the crash", true).await.unwrap();
    assert_eq!(answer.text, "CRASH THE AFTER ");
}

fn v_cost(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v["cocoon"]["cost_nanoton"].as_u64())
}

/// Request hash → charge, from `cocoon-proxy ledger --charges`.
fn charge_rows(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let commission = Commission::from_ppm(COMMISSION_PPM).unwrap();
    charge_rows_json(dir)
        .iter()
        .map(|c| {
            // Each charge is the receipt's tokens at the attested prices, plus the commission.
            let (p, n) = (c["prompt_tokens"].as_u64().unwrap() as u32, c["completion_tokens"].as_u64().unwrap() as u32);
            assert_eq!(c["charge"].as_u64().unwrap(), commission.charge(PRICES.cost(p, n)).0, "{c}");
            (c["request_hash"].as_str().unwrap().to_string(), c["charge"].as_u64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cocoon_serve_talks_to_one_worker_directly_without_a_proxy() {
    let dir = temp_dir("net-direct");
    let a = TestWorker::start(&dir, "a", 0);
    let runner = Runner::direct(
        &a.url,
        Policy::insecure_simulated(),
        EndorsementSources::default(),
        client_key(9),
        NanoTon(10_000_000),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cocoon_client::serve::serve(listener, Arc::new(runner), std::future::pending()));
    let http = HttpClient::default();
    for stream in [true, false] {
        let answer = ask(&http, &url, "straight to the worker", stream).await.unwrap();
        assert_eq!(answer.text, "WORKER THE TO STRAIGHT ");
        // No proxy, no commission: the worker's attested prices alone.
        assert_eq!(answer.cost, PRICES.cost(4, 4).0);
        assert_eq!(answer.worker, a.url);
    }
    // The app's cost bound reaches the enclave sealed: generation stops within it.
    let req = http::Request::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header(cocoon_client::serve::APP_MAX_COST_HEADER, PRICES.cost(4, 2).0.to_string())
        .body(Full::new(Bytes::from(chat_body("straight to the worker", false).to_string())))
        .unwrap();
    let resp = http.send(req).await.unwrap();
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "WORKER THE ", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["cocoon"]["cost_nanoton"].as_u64().unwrap(), PRICES.cost(4, 2).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reputation_survives_a_proxy_restart_after_sigterm() {
    let dir = temp_dir("net-persist");
    let a = TestWorker::start(&dir, "a", 0);
    let (mut proxy_proc, proxy) = dev_proxy(&dir, &[&a.url]);
    let (runner, http) = funded_runner(&dir, &proxy, 1, 11, 1_000_000_000).await;
    for i in 0..5 {
        ask(&http, &runner, &prompt_for(i), true).await.unwrap();
    }
    let status = Command::new("kill").args(["-TERM", &proxy_proc.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let code = proxy_proc.child.wait().unwrap();
        drop(proxy_proc);
        code
    })
    .await
    .unwrap();
    assert!(exit.success(), "the proxy exits cleanly on SIGTERM: {exit:?}");
    let port: u16 = proxy.rsplit(':').next().unwrap().parse().unwrap();
    let mut cmd = Command::new(workspace_bin("cocoon-proxy"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--worker", &a.url])
        .arg("--ledger")
        .arg(dir.join("ledger.sqlite"))
        .arg("--account-key")
        .arg(dir.join("proxy.key"))
        .args(["--insecure-simulated", "--platform", "simulated"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _again = Proc { child: cmd.spawn().unwrap() };
    wait_for_port(port, "the restarted proxy");
    wait_admitted(&proxy, 1).await;
    let w = &workers_json(&proxy).await["data"][0];
    assert_eq!(w["reputation"]["completed"], 5, "{w}");
}
