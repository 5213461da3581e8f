//! `make bench`: the proxy's forwarding next to nginx `proxy_pass` relaying
//! the same sealed traffic to the same worker, the rate at which it routes and
//! meters (receipt verification + ledger commit) 1,000 concurrent clients, the
//! ledger's commits per second, and time to first token through
//! `cocoon serve` → proxy → worker against the worker called directly.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use sha2::{Digest, Sha256};

use cocoon_attestation::Policy;
use cocoon_client::http::HttpClient;
use cocoon_client::serve::Runner;
use cocoon_client::{EndorsementSources, Worker};
use cocoon_protocol::authorization::ClientAuthorization;
use cocoon_protocol::bhttp_msg::InnerRequest;
use cocoon_protocol::ohttp::ClientRequest;
use cocoon_protocol::{NanoTon, media};
use cocoon_tests::procs::{Proc, release_bin, spawn_quiet as spawn};
use cocoon_tests::wait::{free_port, wait_for_port};

/// One prepared sealed request: its bytes and the proxy headers for them.
struct Sealed {
    body: Bytes,
    auth: Vec<(&'static str, String)>,
}

fn seal(worker: &Worker, prompt: &str, key: &SigningKey, n: usize) -> Vec<Sealed> {
    let body = json!({"model": cocoon_tests::echo_engine::MODEL_ID, "messages": [{"role": "user", "content": prompt}],
                      "stream": true});
    let mut inner = InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes());
    inner.stamp(std::time::SystemTime::now());
    let inner = inner.encode();
    (0..n)
        .map(|_| {
            let (sealed, _) = ClientRequest::new(worker.verified().key_config()).unwrap().seal_chunked(&inner).unwrap();
            let hash: [u8; 32] = Sha256::digest(&sealed).into();
            let auth = ClientAuthorization::sign(key, &hash, NanoTon(1_000_000_000)).header_values().into();
            Sealed { body: Bytes::from(sealed), auth }
        })
        .collect()
}

/// Sends one sealed request to `base` and drains the answer; returns its latency.
async fn send(http: &HttpClient, base: &str, worker_id: &str, s: &Sealed) -> Duration {
    let mut req = http::Request::post(format!("{base}/v1/ohttp"))
        .header("content-type", media::OHTTP_CHUNKED_REQUEST)
        .header("te", "trailers")
        .header(media::WORKER_HEADER, worker_id);
    for (n, v) in &s.auth {
        req = req.header(*n, v);
    }
    let t = Instant::now();
    let resp = http.send(req.body(Full::new(s.body.clone())).unwrap()).await.unwrap();
    assert!(resp.status().is_success(), "{base}: {}", resp.status());
    resp.into_body().collect().await.unwrap();
    t.elapsed()
}

struct Stats {
    p50: Duration,
    p99: Duration,
    per_s: f64,
    mb_s: f64,
}

async fn sequential(http: &HttpClient, base: &str, id: &str, reqs: &[Sealed], answer_bytes: usize) -> Stats {
    let start = Instant::now();
    let mut times = Vec::new();
    for r in reqs {
        times.push(send(http, base, id, r).await);
    }
    let total = start.elapsed().as_secs_f64();
    times.sort();
    let bytes: usize = reqs.iter().map(|r| r.body.len() + answer_bytes).sum();
    Stats {
        p50: times[times.len() / 2],
        p99: times[(times.len() * 99 / 100).min(times.len() - 1)],
        per_s: reqs.len() as f64 / total,
        mb_s: bytes as f64 / total / 1e6,
    }
}

async fn concurrent(http: &HttpClient, base: &str, id: &str, reqs: Vec<Sealed>) -> (f64, Duration) {
    let start = Instant::now();
    let n = reqs.len();
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let (http, base, id) = (http.clone(), base.to_string(), id.to_string());
            tokio::spawn(async move { send(&http, &base, &id, &r).await })
        })
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times.sort();
    (n as f64 / start.elapsed().as_secs_f64(), times[times.len() * 99 / 100])
}

fn nginx(dir: &Path, port: u16, upstream: &str) -> Proc {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\ndaemon off;\nerror_log stderr error;\npid {pid};\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
               upstream worker {{ server {upstream}; keepalive 128; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 4m;\n\
                 location / {{ proxy_pass http://worker; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_buffering off; proxy_request_buffering off; }}\n  }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            dir = dir.display(),
            upstream = upstream.trim_start_matches("http://"),
        ),
    )
    .unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx".to_string() } else { "nginx".into() };
    spawn(Command::new(nginx).arg("-c").arg(&conf).arg("-p").arg(dir), "start nginx (apt-get install nginx-light)")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn time_to_first_token(runner: &str, n: usize) -> Duration {
    let http = HttpClient::default();
    let mut times = Vec::new();
    for i in 0..n {
        let body = json!({"model": cocoon_tests::echo_engine::MODEL_ID, "stream": true,
                          "messages": [{"role": "user", "content": format!("first token please {i}")}]});
        let req = http::Request::post(format!("{runner}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let t = Instant::now();
        let resp = http.send(req).await.unwrap();
        let mut body = resp.into_body();
        let mut first = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            if let Some(d) = f.data_ref()
                && first.is_none()
                && String::from_utf8_lossy(d).contains("\"content\":\"")
                && !String::from_utf8_lossy(d).contains("\"content\":\"\"")
            {
                first = Some(t.elapsed());
            }
        }
        times.push(first.expect("a content delta"));
    }
    times.sort();
    times[times.len() / 2]
}

async fn start_runner(runner: Runner) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cocoon_client::serve::serve(listener, Arc::new(runner), std::future::pending()));
    url
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("cocoon-netbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The worker: the test engine (no model time) with prices, behind the shim.
        let config = dir.join("worker.toml");
        std::fs::write(
            &config,
            "[model]\nmax_batch = 1024\nmax_queue = 1024\n[pricing]\nprompt_per_1k = 1000\ncompletion_per_1k = 3000\n",
        )
        .unwrap();
        let sock = dir.join("enclave.sock");
        let _enclave = spawn(
            Command::new(env!("CARGO_BIN_EXE_cocoon-test-enclave"))
                .args(["--listen", &format!("unix:{}", sock.display()), "--platform", "simulated"])
                .args(["--insecure-simulated", "--config", config.to_str().unwrap()]),
            "start the test enclave",
        );
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let host_port = free_port();
        let _host = spawn(
            Command::new(release_bin("cocoon-host"))
                .args(["--listen", &format!("127.0.0.1:{host_port}"), "--enclave", &format!("unix:{}", sock.display())])
                // One client machine plays a thousand clients here.
                .args(["--max-in-flight", "4096", "--max-in-flight-per-source", "4096"])
                .args(["--max-connections-per-source", "4096"]),
            "start cocoon-host",
        );
        wait_for_port(host_port, "cocoon-host");
        let worker_url = format!("http://127.0.0.1:{host_port}");
        let proxy_port = free_port();
        let _proxy = spawn(
            Command::new(release_bin("cocoon-proxy"))
                .args(["serve", "--listen", &format!("127.0.0.1:{proxy_port}"), "--worker", &worker_url])
                .arg("--ledger")
                .arg(dir.join("ledger.sqlite"))
                .arg("--account-key")
                .arg(dir.join("proxy.key"))
                .args(["--insecure-simulated", "--platform", "simulated"]),
            "start cocoon-proxy",
        );
        wait_for_port(proxy_port, "cocoon-proxy");
        let proxy = format!("http://127.0.0.1:{proxy_port}");
        let nginx_port = free_port();
        let _nginx = nginx(&dir, nginx_port, &worker_url);
        wait_for_port(nginx_port, "nginx");
        let nginx_url = format!("http://127.0.0.1:{nginx_port}");

        let key = SigningKey::from_bytes(&[9; 32]);
        let out = Command::new(release_bin("cocoon-proxy"))
            .arg("deposit")
            .arg("--db")
            .arg(dir.join("ledger.sqlite"))
            .args(["--client", &hex::encode(key.verifying_key().to_bytes()), "--amount", "9000000000000000000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let worker = Worker::attest(&worker_url, &Policy::insecure_simulated(), true).await.unwrap();
        let worker_id = {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (_, body) = HttpClient::default().get(format!("{proxy}/v1/workers").parse().unwrap(), 1 << 20).await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                if let Some(id) = v["data"][0]["id"].as_str() {
                    break id.to_string();
                }
                assert!(Instant::now() < deadline, "the proxy did not admit the worker");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let http = HttpClient::default();
        let small = "one two three four five six seven eight";
        let big = "x".repeat(1_000_000);
        let paths = [("direct to the worker's shim", worker_url.as_str()), ("nginx proxy_pass", nginx_url.as_str()), ("cocoon-proxy (auth, meter, ledger)", proxy.as_str())];

        println!("\n## Small streamed requests (8 tokens), 300 sequential, then 64 at once x 5\n");
        println!("| path | p50 | p99 | added p50 vs direct | sequential req/s | concurrent req/s | concurrent p99 |");
        println!("|---|---|---|---|---|---|---|");
        let mut base_p50 = 0.0;
        let mut rates = Vec::new();
        for (name, base) in paths {
            let seq = sequential(&http, base, &worker_id, &seal(&worker, small, &key, 300), 0).await;
            let mut best = (0.0f64, Duration::ZERO);
            for _ in 0..5 {
                let r = concurrent(&http, base, &worker_id, seal(&worker, small, &key, 64)).await;
                if r.0 > best.0 {
                    best = r;
                }
            }
            if base_p50 == 0.0 {
                base_p50 = ms(seq.p50);
            }
            rates.push(best.0);
            println!(
                "| {name} | {:.2} ms | {:.2} ms | {:+.2} ms | {:.0} | {:.0} | {:.1} ms |",
                ms(seq.p50),
                ms(seq.p99),
                ms(seq.p50) - base_p50,
                seq.per_s,
                best.0,
                ms(best.1)
            );
        }
        println!("\ncocoon-proxy / nginx concurrent throughput: {:.2}", rates[2] / rates[1]);

        println!("\n## 1 MB sealed bodies (a 1 MB prompt answered with ~1 MB), 20 sequential\n");
        println!("| path | p50 | p99 | throughput (up + down) |");
        println!("|---|---|---|---|");
        let mut tputs = Vec::new();
        for (name, base) in paths {
            let s = sequential(&http, base, &worker_id, &seal(&worker, &big, &key, 20), 1_000_000).await;
            tputs.push(s.mb_s);
            println!("| {name} | {:.1} ms | {:.1} ms | {:.0} MB/s |", ms(s.p50), ms(s.p99), s.mb_s);
        }
        println!("\ncocoon-proxy / nginx 1 MB throughput: {:.2}", tputs[2] / tputs[1]);

        println!("\n## 1,000 concurrent clients through cocoon-proxy (each request routed, receipt verified, charge committed)\n");
        let reqs = seal(&worker, small, &key, 1000);
        let (per_s, p99) = concurrent(&http, &proxy, &worker_id, reqs).await;
        let reqs = seal(&worker, small, &key, 1000);
        let (direct_per_s, direct_p99) = concurrent(&http, &worker_url, &worker_id, reqs).await;
        println!("| path | requests/s | p99 |");
        println!("|---|---|---|");
        println!("| direct to the worker (no metering) | {direct_per_s:.0} | {:.0} ms |", ms(direct_p99));
        println!("| cocoon-proxy, metered | {per_s:.0} | {:.0} ms |", ms(p99));
        println!("\nmetered / direct: {:.2}", per_s / direct_per_s);

        println!("\n## Ledger group commit (SQLite WAL, synchronous=FULL), 5,000 charges from 1,000 tasks\n");
        let ledger = Arc::new(cocoon_proxy::ledger::Ledger::open(&dir.join("bench-ledger.sqlite")).unwrap());
        let start = Instant::now();
        let tasks: Vec<_> = (0..1000u32)
            .map(|t| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    for j in 0..5u32 {
                        let mut hash = [0u8; 32];
                        hash[..4].copy_from_slice(&t.to_le_bytes());
                        hash[4..8].copy_from_slice(&j.to_le_bytes());
                        ledger.charge(charge(hash)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("| commits | seconds | charges/s |");
        println!("|---|---|---|");
        println!("| 5000 | {secs:.2} | {:.0} |", 5000.0 / secs);

        println!("\n## Time to first token through cocoon serve (evidence cached), 50 sequential streamed chats\n");
        let via_proxy = start_runner(
            Runner::via_proxy(&proxy, Policy::insecure_simulated(), EndorsementSources::default(), key.clone(), NanoTon(1_000_000))
                .await
                .unwrap(),
        )
        .await;
        let direct = start_runner(
            Runner::direct(&worker_url, Policy::insecure_simulated(), EndorsementSources::default(), key.clone(), NanoTon(1_000_000))
                .await
                .unwrap(),
        )
        .await;
        let _ = time_to_first_token(&via_proxy, 3).await;
        let t_proxy = time_to_first_token(&via_proxy, 50).await;
        let t_direct = time_to_first_token(&direct, 50).await;
        println!("| path | median time to first token |");
        println!("|---|---|");
        println!("| cocoon serve -> worker | {:.2} ms |", ms(t_direct));
        println!("| cocoon serve -> cocoon-proxy -> worker | {:.2} ms |", ms(t_proxy));
        println!("\nnetwork overhead of the proxy: {:+.2} ms ({:.2}x)", ms(t_proxy) - ms(t_direct), ms(t_proxy) / ms(t_direct));
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn charge(request_hash: [u8; 32]) -> cocoon_proxy::ledger::ChargeRecord {
    cocoon_proxy::ledger::ChargeRecord {
        request_hash,
        client_key: [1; 32],
        worker_id: "w-bench".into(),
        worker_url: "http://bench".into(),
        payout_address: None,
        model_id: "m".into(),
        prompt_tokens: 8,
        completion_tokens: 8,
        worker_cost: NanoTon(32),
        commission: NanoTon(3),
        charge: NanoTon(35),
        receipt: vec![0; 100],
        created_at: 0,
    }
}
