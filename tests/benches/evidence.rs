//! `make bench`: fresh evidence at scale. Verifiers each ask for evidence
//! bound to their own new nonce, as fast as they are answered, for a few
//! seconds; the enclave batches the nonces waiting into one hardware report
//! (a Merkle root) per interval. The simulated producer takes
//! `REPORT_DELAY_MS` per report, standing in for a TDX quote's latency.
//! Reference, measured in the same run: one verifier at a time, where every
//! request costs its own report, as before batching.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_attestation::Policy;
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_tests::procs::{Proc, release_bin, spawn_quiet};
use cocoon_tests::wait::{free_port, wait_for_port};

/// A real TDX quote takes tens of milliseconds.
const REPORT_DELAY_MS: u64 = 30;
const RUN: Duration = Duration::from_secs(4);

struct Outcome {
    per_s: f64,
    reports_per_s: f64,
    failures: usize,
    p99: Duration,
}

/// `verifiers` loops, each fetching and verifying fresh evidence until `RUN` is over.
async fn run(url: &str, verifiers: usize) -> Outcome {
    let http = HttpClient::default();
    let roots = Arc::new(Mutex::new(HashSet::new()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..verifiers)
        .map(|_| {
            let (http, url, roots) = (http.clone(), url.to_string(), roots.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut latencies) = (0usize, 0usize, Vec::new());
                let (policy, sources) = (Policy::insecure_simulated(), EndorsementSources::default());
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    match cocoon_client::worker::fetch_verified(&http, &url, &policy, &sources, true).await {
                        Ok((doc, _)) => {
                            ok += 1;
                            latencies.push(t.elapsed());
                            let (d, _) = cocoon_protocol::EvidenceDocument::decode(&doc).unwrap();
                            roots.lock().unwrap().insert(d.nonce.map(|n| n.to_vec()));
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect();
    let (mut ok, mut failures, mut latencies) = (0, 0, Vec::new());
    for t in tasks {
        let (o, f, l) = t.await.unwrap();
        ok += o;
        failures += f;
        latencies.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies.get(latencies.len() * 99 / 100).copied().unwrap_or_default();
    let reports = roots.lock().unwrap().len();
    Outcome { per_s: ok as f64 / secs, reports_per_s: reports as f64 / secs, failures, p99 }
}

/// A test enclave (simulated reports taking `REPORT_DELAY_MS`, at most one
/// per `interval_ms`) behind a host shim; returns the processes and the URL.
async fn worker(dir: &Path, tag: &str, interval_ms: u64) -> (Vec<Proc>, String) {
    let sock = dir.join(format!("{tag}.sock"));
    let enclave = spawn_quiet(
        Command::new(release_bin("cocoon-test-enclave"))
            .args(["--listen", &format!("unix:{}", sock.display()), "--platform", "simulated"])
            .args(["--insecure-simulated", "--simulated-report-delay-ms", &REPORT_DELAY_MS.to_string()])
            .args(["--evidence-interval-ms", &interval_ms.to_string()]),
        "start the test enclave",
    );
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let port = free_port();
    // One client machine plays every verifier here.
    let host = spawn_quiet(
        Command::new(release_bin("cocoon-host"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--enclave", &format!("unix:{}", sock.display())])
            .args(["--max-connections-per-source", "4096", "--max-in-flight-per-source", "4096"]),
        "start cocoon-host",
    );
    wait_for_port(port, "cocoon-host");
    (vec![enclave, host], format!("http://127.0.0.1:{port}"))
}

fn main() {
    cocoon_runtime::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("cocoon-bench-evidence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The reference: no interval between reports, one verifier at a time,
        // so that every answer costs its own report.
        let (_unbatched, unbatched_url) = worker(&dir, "unbatched", 0).await;
        let reference = run(&unbatched_url, 1).await;
        let (_batched, url) = worker(&dir, "batched", 200).await;

        println!("\n## Fresh evidence: each verifier's own nonce, {REPORT_DELAY_MS} ms per hardware report\n");
        println!("| verifiers at once | verified answers/s | hardware reports/s | answers per report | p99 | failures | answers/s vs one at a time |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| 1, one report per answer (reference) | {:.0} | {:.1} | 1 | {:.0} ms | {} | 1.0 |",
            reference.per_s,
            reference.reports_per_s,
            reference.p99.as_secs_f64() * 1000.0,
            reference.failures
        );
        for verifiers in [1, 100, 1000] {
            let o = run(&url, verifiers).await;
            println!(
                "| {verifiers} | {:.0} | {:.1} | {:.0} | {:.0} ms | {} | {:.1} |",
                o.per_s,
                o.reports_per_s,
                o.per_s / o.reports_per_s.max(f64::MIN_POSITIVE),
                o.p99.as_secs_f64() * 1000.0,
                o.failures,
                o.per_s / reference.per_s
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
