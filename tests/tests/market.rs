//! Market-oriented prices, with real processes on loopback: three workers of
//! one model at different prices behind one proxy. The cheapest takes the
//! traffic while it has room and the next cheapest the overflow; a client's
//! price ceiling keeps dearer workers out, even when the proxy does not; the
//! market is published; costs follow each worker's own prices; a re-priced
//! worker is re-admitted at its new prices.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use cocoon_attestation::Policy;
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_client::serve::Runner;
use cocoon_protocol::{Commission, NanoTon, Prices};
use cocoon_tests::echo_engine::MODEL_ID;
use support::net::*;
use support::*;

fn prices(prompt: u64, completion: u64) -> Prices {
    Prices { prompt_per_1k: NanoTon(prompt), completion_per_1k: NanoTon(completion) }
}

const CHEAP: Prices = PRICES;
/// 1.2 times the cheap worker's: at weight 2, its price term is 1.44.
const MID: Prices = Prices { prompt_per_1k: NanoTon(1_200_000), completion_per_1k: NanoTon(3_600_000) };
/// Three times: its price term is 9.
const DEAR: Prices = Prices { prompt_per_1k: NanoTon(3_000_000), completion_per_1k: NanoTon(9_000_000) };

/// A funded runner on `proxy` whose requests may use only workers within `ceiling`.
async fn runner(dir: &std::path::Path, proxy: &str, seed: u8, ceiling: Option<Prices>) -> String {
    let key = client_key(seed);
    deposit(dir, &key, 100_000_000_000);
    let runner = Runner::via_proxy(
        proxy,
        Policy::insecure_simulated(),
        EndorsementSources::default(),
        key,
        NanoTon(100_000_000),
    )
    .await
    .unwrap()
    .with_max_price(ceiling);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cocoon_client::serve::serve(listener, Arc::new(runner), std::future::pending()));
    url
}

/// `n` requests in bursts of `at_once`; the answers, in order.
async fn requests(runner: &str, n: usize, at_once: usize, first: usize) -> Vec<Result<Answer, String>> {
    let http = HttpClient::default();
    let mut out = Vec::new();
    for burst in (0..n).collect::<Vec<_>>().chunks(at_once) {
        let tasks: Vec<_> = burst
            .iter()
            .map(|&i| {
                let (http, runner) = (http.clone(), runner.to_string());
                tokio::spawn(async move { ask(&http, &runner, &prompt_for(first + i), i % 2 == 0).await })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

fn served_by(answers: &[Result<Answer, String>], id: &str) -> usize {
    answers.iter().filter(|a| a.as_ref().is_ok_and(|a| a.worker == id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cheapest_worker_wins_while_it_has_room_and_ceilings_hold() {
    let dir = temp_dir("market");
    let mut cheap = TestWorker::priced(&dir, "cheap", 30, 4, CHEAP);
    let mid = TestWorker::priced(&dir, "mid", 30, 4, MID);
    let dear = TestWorker::priced(&dir, "dear", 30, 4, DEAR);
    let (_proxy, proxy) = dev_proxy(&dir, &[&cheap.url, &mid.url, &dear.url]);
    wait_admitted(&proxy, 3).await;
    let (cheap_id, mid_id, dear_id) = (registry_id(&cheap.url), registry_id(&mid.url), registry_id(&dear.url));
    let by_id: HashMap<String, Prices> =
        [(cheap_id.clone(), CHEAP), (mid_id.clone(), MID), (dear_id.clone(), DEAR)].into_iter().collect();
    let open = runner(&dir, &proxy, 41, None).await;

    // Every new worker is tried a few times first (its reputation is unknown).
    let warm = requests(&open, 12, 1, 0).await;
    assert!(warm.iter().all(|a| a.is_ok()), "{warm:?}");

    // One request at a time: the cheapest has room, and serves (nearly) all.
    let calm = requests(&open, 20, 1, 100).await;
    assert!(served_by(&calm, &cheap_id) >= 19, "cheap {} of 20: {calm:?}", served_by(&calm, &cheap_id));

    // Twelve at a time on workers of capacity 8 (4 in a batch, 4 queued):
    // the cheapest cannot take them all, and the next cheapest (price term
    // 1.44) takes the overflow before the dearest (9). How early depends on
    // the scores and first-byte times the proxy has measured.
    let busy = requests(&open, 36, 12, 200).await;
    assert!(busy.iter().all(|a| a.is_ok()), "{busy:?}");
    let (c, m, d) = (served_by(&busy, &cheap_id), served_by(&busy, &mid_id), served_by(&busy, &dear_id));
    eprintln!("twelve at a time: cheap {c}, mid {m}, dear {d} of 36");
    assert!(c >= 12 && m >= 9 && d < m && d < c, "cheap {c}, mid {m}, dear {d} of 36");

    // What each answer cost is its own worker's price, and the ledger agrees.
    let commission = Commission::from_ppm(COMMISSION_PPM).unwrap();
    let mut answered = 0;
    for (i, a) in warm.iter().chain(&calm).chain(&busy).enumerate() {
        let a = a.as_ref().unwrap();
        let first = [0, 100, 200][usize::from(i >= 12) + usize::from(i >= 32)];
        let offset = [0, 12, 32][usize::from(i >= 12) + usize::from(i >= 32)];
        let n = prompt_for(first + i - offset).split_whitespace().count() as u32;
        assert_eq!(a.cost, commission.charge(by_id[&a.worker].cost(n, n)).0, "answer {i} from {}", a.worker);
        answered += 1;
    }
    let rows = charge_rows_json(&dir);
    assert_eq!(rows.len(), answered, "one charge per answer");
    for r in &rows {
        let worker = registry_id(r["worker_url"].as_str().unwrap());
        let (p, c) = (r["prompt_tokens"].as_u64().unwrap() as u32, r["completion_tokens"].as_u64().unwrap() as u32);
        assert_eq!(r["worker_cost"].as_u64().unwrap(), by_id[&worker].cost(p, c).0, "{r}");
    }

    // A ceiling at the middle price: the dear worker is never used, even
    // when the others are full (requests then wait for room).
    let thrifty = runner(&dir, &proxy, 42, Some(MID)).await;
    let capped = requests(&thrifty, 36, 12, 300).await;
    assert!(capped.iter().all(|a| a.is_ok()), "{capped:?}");
    assert_eq!(served_by(&capped, &dear_id), 0);
    // The same ceiling per request, from the app's header, over the runner without one.
    let http = HttpClient::default();
    let header = [("x-cocoon-max-price-per-1k", CHEAP.to_string())];
    let (status, body) = post_chat_with(&http, &open, &chat_body(&prompt_for(400), false), &header).await;
    let a = parse_answer(status, &body, false).unwrap();
    assert_eq!(a.worker, cheap_id);

    // Below every worker: a clear refusal naming the cheapest price.
    let stingy = runner(&dir, &proxy, 43, Some(prices(500_000, 1_000_000))).await;
    let (status, body) = post_json(&http, &stingy, "/v1/chat/completions", &chat_body("hello there", false)).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 402, "{text}");
    assert_eq!(code_of(&text), "price_above_ceiling", "{text}");
    assert!(text.contains("1000000 and 3000000"), "the cheapest price is named: {text}");

    // The market, from verified claims: lowest, median and highest, with capacity.
    let (status, body) = get(&proxy, "/v1/market").await;
    assert_eq!(status, 200, "{body}");
    let market: Value = serde_json::from_str(&body).unwrap();
    let m = &market["models"][0];
    assert_eq!(
        (m["model"].as_str(), m["workers"].as_u64(), m["capacity"].as_u64()),
        (Some(MODEL_ID), Some(3), Some(24))
    );
    let typical = |p: Prices| p.cost(500, 250).0;
    for (point, p) in [("lowest", CHEAP), ("median", MID), ("highest", DEAR)] {
        assert_eq!(m[point]["prices"], serde_json::to_value(p).unwrap(), "{point}: {m}");
        assert_eq!(m[point]["typical_cost"].as_u64(), Some(typical(p)), "{point}");
        assert_eq!(m[point]["capacity"].as_u64(), Some(8), "{point}");
    }
    let out = std::process::Command::new(workspace_bin("cocoon")).args(["market", "--proxy", &proxy]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in [CHEAP, MID, DEAR] {
        assert!(table.contains(&typical(p).to_string()), "{table}");
    }
    let (_, metrics) = get(&proxy, "/metrics").await;
    let gauge = format!("cocoon_proxy_market_lowest_nanoton{{model=\"{MODEL_ID}\"}} {}", typical(CHEAP));
    assert!(metrics.contains(&gauge), "{gauge} in {metrics}");

    // Re-priced: the cheap worker restarts with a new config at four times its
    // prices; the proxy re-attests it (same id, not dropped) at the new ones.
    let repriced = prices(4_000_000, 12_000_000);
    priced_config(&dir, "cheap", (repriced.prompt_per_1k.0, repriced.completion_per_1k.0), 4);
    cheap.restart_enclave();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = worker_state(&proxy, &cheap.url).await;
        if w["prices"] == serde_json::to_value(repriced).unwrap() && w["state"] == "up" {
            assert_eq!(w["id"].as_str(), Some(cheap_id.as_str()));
            assert!(w["reputation"]["completed"].as_u64().unwrap() > 20, "its record was kept: {w}");
            break;
        }
        assert!(Instant::now() < deadline, "not re-admitted at the new prices: {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = requests(&open, 10, 1, 500).await;
    assert!(served_by(&after, &mid_id) >= 9, "the middle one is the cheapest now: {after:?}");
    for (i, a) in after.iter().enumerate() {
        let a = a.as_ref().unwrap();
        if a.worker == cheap_id {
            let n = prompt_for(500 + i).split_whitespace().count() as u32;
            assert_eq!(a.cost, commission.charge(repriced.cost(n, n)).0);
        }
    }
    drop(mid);
    drop(dear);
}

/// The proxy is not trusted to keep the ceiling: through a relay that hides
/// it from the proxy, the runner still refuses a worker above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runner_refuses_a_worker_above_its_ceiling_whatever_the_proxy_routes() {
    let dir = temp_dir("market-lying");
    let dear = TestWorker::priced(&dir, "dear", 0, 4, DEAR);
    let (_proxy, proxy) = dev_proxy(&dir, &[&dear.url]);
    wait_admitted(&proxy, 1).await;
    // Honest proxy: refused at routing.
    let http = HttpClient::default();
    let honest = runner(&dir, &proxy, 44, Some(MID)).await;
    let (status, body) = post_json(&http, &honest, "/v1/chat/completions", &chat_body("hello there", false)).await;
    assert_eq!((status, code_of(&String::from_utf8_lossy(&body))), (402, "price_above_ceiling".to_string()));
    // A proxy that ignores the ceiling (the relay renames the field it reads).
    // The relay raises the completion price of the ceiling the proxy sees.
    let ceiling = prices(9_000_000, 3_600_000);
    let relay = rewriting_relay(&proxy, b"\"completion_per_1k\":3600000}", b"\"completion_per_1k\":9999999}").await;
    let fooled = runner(&dir, &relay, 45, Some(ceiling)).await;
    let (status, body) = post_json(&http, &fooled, "/v1/chat/completions", &chat_body("hello there", false)).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("above the ceiling"), "{text}");
    assert!(charge_rows_json(&dir).is_empty(), "nothing was sent to the dear worker");
}
