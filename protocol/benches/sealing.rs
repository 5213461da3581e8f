//! `make bench`: sealing throughput per core next to `openssl speed`, and HPKE setup time.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_protocol::ohttp::{ClientRequest, GatewayKey};

/// Mean time of one call of `f`, running it for about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget || n < 3 {
        f();
        n += 1;
    }
    start.elapsed() / n
}

/// `openssl speed -evp aes-256-gcm` for one block size, in bytes per second.
fn openssl_speed(bytes: usize) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", "aes-256-gcm", "-seconds", "1", "-bytes", &bytes.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("AES-256-GCM") || l.starts_with("aes-256-gcm"))?;
    let kbytes: f64 = line.split_whitespace().last()?.trim_end_matches('k').parse().ok()?;
    Some(kbytes * 1000.0)
}

fn mb_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

fn main() {
    let budget = Duration::from_millis(800);
    let gateway = GatewayKey::generate(1);
    let config = gateway.config().clone();

    println!("\n## Sealing (one core, AES-256-GCM), message bytes per second\n");
    println!(
        "| size | response seal | response seal+open | whole request seal+open (HPKE included) | openssl encrypt | seal / openssl |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, size) in [("1 KiB", 1usize << 10), ("1 MiB", 1 << 20)] {
        let msg = vec![0x5au8; size];
        // The streaming response path: one sealer and one opener per request,
        // then pure AES-256-GCM per chunk (16 KiB plaintext at most).
        let new_stream = || {
            let (sealed, mut opener) = ClientRequest::new(&config).unwrap().seal_chunked(b"").unwrap();
            let (_, mut sealer) = gateway.open_chunked_request(&sealed).unwrap();
            opener.push(&sealer.seal_chunk(b"start").unwrap()).unwrap();
            (sealer, opener, 0usize)
        };
        let mut sealer = new_stream().0;
        let seal = time_per_call(budget, || {
            black_box(sealer.seal_chunk(black_box(&msg)).unwrap());
        });
        // A client accepts at most 64 MiB per stream: start a new one every 32 MiB.
        let mut stream = new_stream();
        let seal_open = time_per_call(budget, || {
            if stream.2 > 32 << 20 {
                stream = new_stream();
            }
            let ct = stream.0.seal_chunk(black_box(&msg)).unwrap();
            black_box(stream.1.push(&ct).unwrap());
            stream.2 += ct.len();
        });
        // A whole request, HPKE included (1 MiB less the request limit's headroom).
        let req = &msg[..size.min(cocoon_protocol::limits::MAX_INNER_REQUEST)];
        let req_rt = time_per_call(budget, || {
            let (sealed, _) = ClientRequest::new(&config).unwrap().seal(black_box(req)).unwrap();
            black_box(gateway.open_request(&sealed).unwrap());
        });
        let ours = mb_per_s(size, seal);
        let ssl = openssl_speed(size).map(|b| b / 1e6);
        println!(
            "| {label} | {:.0} MB/s | {:.0} MB/s | {:.0} MB/s | {} | {} |",
            ours,
            mb_per_s(size, seal_open),
            mb_per_s(req.len(), req_rt),
            ssl.map(|s| format!("{s:.0} MB/s")).unwrap_or_else(|| "n/a".into()),
            ssl.map(|s| format!("{:.2}", ours / s)).unwrap_or_else(|| "n/a".into()),
        );
    }

    println!("\n## HPKE request setup (X25519, HKDF-SHA256), per request\n");
    let client = time_per_call(budget, || {
        black_box(ClientRequest::new(&config).unwrap().seal(b"").unwrap());
    });
    let (sealed, _) = ClientRequest::new(&config).unwrap().seal(b"").unwrap();
    let server = time_per_call(budget, || {
        black_box(gateway.open_request(&sealed).unwrap());
    });
    println!("| side | time |");
    println!("|---|---|");
    println!("| client: key schedule + seal empty request | {:.1} µs |", client.as_secs_f64() * 1e6);
    println!("| gateway: decapsulate + open + export | {:.1} µs |", server.as_secs_f64() * 1e6);
}
