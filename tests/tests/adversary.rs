//! The adversary suite: one test per attack a hostile review found, each
//! with real processes on loopback (test workers, `cocoon-proxy`, client
//! runners, the local emulated chain where money moves on TON). Each test was
//! written against the code that had the hole and failed there; after each
//! attack the ledger adds up and honest workers still get traffic.

mod support;

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use cocoon_attestation::Policy;
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_client::worker::{ClientError, Route, Worker};
use cocoon_protocol::authorization::ClientAuthorization;
use cocoon_protocol::bhttp_msg::{InnerRequest, ResponseEvent};
use cocoon_protocol::{Commission, NanoTon};
use cocoon_tests::echo_engine::{MODEL_ID, answer_tokens};
use support::chain::*;
use support::net::*;
use support::*;

/// What a hand-made streamed request got back: the sealed status, the text
/// generated, the error code inside the stream, and whether a receipt came.
#[derive(Debug)]
struct Outcome {
    status: u16,
    text: String,
    error: Option<String>,
    receipt: bool,
}

/// Sends `prompt` to `worker` through the proxy, streamed, with no sealed cost
/// cap (as a free rider would), signed by `key` for at most `max_cost`.
async fn free_ride(worker: &Worker, key: &SigningKey, max_cost: u64, prompt: &str) -> Result<Outcome, ClientError> {
    let body = json!({"model": MODEL_ID, "stream": true, "max_tokens": 4096,
                      "messages": [{"role": "user", "content": prompt}]});
    let inner = InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes());
    let mut stream = worker
        .stream_with(&inner, |hash| ClientAuthorization::sign(key, hash, NanoTon(max_cost)).header_values().into())
        .await?;
    let mut out = Outcome { status: 0, text: String::new(), error: None, receipt: false };
    loop {
        match stream.next_event().await {
            Ok(Some(ResponseEvent::Head { status, .. })) => out.status = status,
            Ok(Some(ResponseEvent::Content(c))) => {
                for line in String::from_utf8_lossy(&c).lines() {
                    let Some(data) = line.strip_prefix("data: ") else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
                    if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                        out.text.push_str(piece);
                    }
                    if let Some(code) = v["error"]["code"].as_str() {
                        out.error = Some(code.to_string());
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            // The proxy cut the stream (an unchargeable receipt): what arrived stays arrived.
            Err(_) => break,
        }
    }
    out.receipt = stream.trailer(cocoon_protocol::media::RECEIPT_HEADER).is_some();
    Ok(out)
}

/// Every worker's public record at the proxy.
async fn worker_records(proxy: &str) -> Vec<Value> {
    workers_json(proxy).await["data"].as_array().unwrap().clone()
}

/// Asks `n` questions at once through `runner`; returns how many were answered.
async fn honest_burst(runner: &str, from: usize, n: usize) -> (usize, std::collections::BTreeSet<String>) {
    let http = HttpClient::default();
    let tasks: Vec<_> = (from..from + n)
        .map(|i| {
            let (http, runner) = (http.clone(), runner.to_string());
            tokio::spawn(async move { (i, ask(&http, &runner, &prompt_for(i), i % 2 == 0).await) })
        })
        .collect();
    let mut served = 0;
    let mut workers = std::collections::BTreeSet::new();
    for t in tasks {
        if let (i, Ok(a)) = t.await.unwrap() {
            assert_eq!(a.text, answer_tokens(&prompt_for(i)).concat());
            served += 1;
            workers.insert(a.worker);
        }
    }
    (served, workers)
}

/// The ledger's totals agree with its rows: charged = worker earnings +
/// commission, every account's balance is its deposits less its charges.
fn assert_ledger_adds_up(dir: &std::path::Path) -> Value {
    let l = ledger_json(dir);
    let t = &l["totals"];
    let (charged, earned, commission) =
        (t["charged"].as_u64().unwrap(), t["worker_earnings"].as_u64().unwrap(), t["commission"].as_u64().unwrap());
    assert_eq!(charged, earned + commission, "{l}");
    let mut deposits = 0u64;
    let mut charges = 0u64;
    for a in l["accounts"].as_array().unwrap() {
        let (d, c) = (a["deposited"].as_u64().unwrap(), a["charged"].as_u64().unwrap());
        assert_eq!(a["balance"].as_i64().unwrap(), d as i64 - c as i64, "{a}");
        deposits += d;
        charges += c;
    }
    assert_eq!((deposits, charges), (t["deposits"].as_u64().unwrap(), charged), "{l}");
    let per_worker: u64 = l["workers"].as_array().unwrap().iter().map(|w| w["earned"].as_u64().unwrap()).sum();
    assert_eq!(per_worker, earned, "{l}");
    l
}

/// Hole 1: a fresh key signed `max_cost = 0`, sealed no worker cap and
/// streamed. The answer's content reached it before the trailer, the charge
/// was over budget so nothing was charged, and the worker was quarantined for
/// it. Now the proxy's own cap reaches the enclave: the free rider gets no
/// generation, nobody is blamed, and the workers keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_free_rider_gets_no_answer_and_no_honest_worker_is_quarantined() {
    let dir = temp_dir("adv-free-rider");
    // A few milliseconds a token, so that concurrent answers overlap and spread.
    let a = TestWorker::start(&dir, "a", 3);
    let b = TestWorker::start(&dir, "b", 3);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url, &b.url]);
    wait_admitted(&proxy, 2).await;

    let prompt = "tell me everything about the free lunch";
    for round in 0..4u8 {
        let rider = SigningKey::from_bytes(&[200 + round; 32]);
        let worker = routed_worker(&proxy, &[]).await;
        let got = free_ride(&worker, &rider, 0, prompt).await.unwrap();
        assert!(got.text.is_empty(), "round {round}: the free rider got {:?}", got.text);
        // The enclave stopped at the proxy's cap of 0: the prompt alone is over it.
        assert_eq!((got.error.as_deref(), got.receipt), (Some("max_cost_exceeded"), false), "round {round}: {got:?}");
        // A fresh key may not promise to pay what it does not hold.
        let refused = free_ride(&worker, &rider, 1_000_000, prompt).await.unwrap_err();
        assert!(
            matches!(&refused, ClientError::Status { status: 402, body, .. } if body.contains("insufficient_funds")),
            "{refused}"
        );
    }
    for w in worker_records(&proxy).await {
        assert_eq!(w["state"], "up", "no worker is blamed for a client's cap: {w}");
        assert_eq!(w["reputation"]["bad_receipts"], 0, "{w}");
    }

    // Honest clients are served by both workers, and everything charged was paid for.
    let (runner, _) = funded_runner(&dir, &proxy, 2, 7, 1_000_000_000).await;
    let (served, workers) = honest_burst(&runner, 0, 30).await;
    assert_eq!(served, 30);
    assert_eq!(workers.len(), 2, "both workers still get traffic: {workers:?}");
    let l = assert_ledger_adds_up(&dir);
    assert_eq!(l["totals"]["charges"], 30, "{l}");
    assert_eq!(l["accounts"].as_array().unwrap().len(), 1, "no free rider has an account: {l}");
}

/// Hole 1, the honest side: `cocoon serve` reserved a flat 0.1 TON per
/// request, so a client with 1 TON could have nine in flight. Now each
/// request reserves what it can cost at the routed worker's prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_small_requests_at_once_on_one_ton_are_all_served() {
    let dir = temp_dir("adv-reserve");
    let a = TestWorker::with_capacity(&dir, "a", 20, 64);
    let (_proxy, proxy) = dev_proxy(&dir, &[&a.url]);
    wait_admitted(&proxy, 1).await;
    let key = client_key(8);
    deposit(&dir, &key, 1_000_000_000);
    // The CLI's default ceiling per request: 0.1 TON.
    let runner = start_runner_with(&proxy, key, NanoTon(100_000_000)).await;
    let (served, _) = honest_burst(&runner, 0, 40).await;
    assert_eq!(served, 40, "every request fits in 1 TON at these prices");
    let l = assert_ledger_adds_up(&dir);
    assert_eq!(l["totals"]["charges"], 40);
    // What a request reserves is bounded by its prompt and max_tokens at the worker's prices.
    let commission = Commission::from_ppm(COMMISSION_PPM).unwrap();
    let one = commission.charge(PRICES.cost(4096, 4096));
    assert!(one.0 * 40 < 1_000_000_000, "{one}");
}

/// The three parties of paid requests on a fresh local chain (started with
/// `chain_args`): client, proxy and worker keys (seeds `seed`, `seed + 1`,
/// `seed + 2`) and their wallets, funded with 5, `proxy_tons` and 1 TON.
struct Parties {
    _local: LocalChain,
    api: String,
    chain: cocoon_ton::toncenter::Toncenter,
    dir: std::path::PathBuf,
    client: (std::path::PathBuf, cocoon_ton::TonAddress),
    proxy: (std::path::PathBuf, cocoon_ton::TonAddress),
    worker: (std::path::PathBuf, cocoon_ton::TonAddress),
}

async fn parties(name: &str, chain_args: &[&str], seed: u8, proxy_tons: u64) -> Parties {
    let local = start_local_chain_with(chain_args);
    let api = local.1.clone();
    let chain = cocoon_ton::toncenter::Toncenter::new(&api, None).unwrap();
    let dir = temp_dir(name);
    let client = wallet_key(&dir, "client.key", seed);
    let proxy = wallet_key(&dir, "proxy.key", seed + 1);
    let worker = wallet_key(&dir, "worker.key", seed + 2);
    for (w, amount) in [(&client.1, 5 * TON), (&proxy.1, proxy_tons * TON), (&worker.1, TON)] {
        chain.local("airdrop", json!({ "address": w.to_hex(), "amount": amount.to_string() })).await.unwrap();
    }
    Parties { _local: local, api, chain, dir, client, proxy, worker }
}

/// `cocoon channel claim`, which must fail: its error output.
fn refused_claim(api: &str, channel: &std::path::Path, voucher: &std::path::Path, key: &std::path::Path) -> String {
    let out = cocoon_cmd(api, &["channel", "claim"]).arg(channel).arg(voucher).arg("--key").arg(key).output().unwrap();
    assert!(!out.status.success(), "the claim went through: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A proxy paid on TON through `api`, with `credit_limit`, for the workers at `workers`.
fn ton_proxy(dir: &std::path::Path, key: &std::path::Path, api: &str, workers: &[&str], extra: &str) -> (Proc, String) {
    let port = free_port();
    let config = dir.join("proxy.toml");
    let workers: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nledger = \"{}\"\naccount_key = \"{}\"\ncommission_ppm = {COMMISSION_PPM}\n\
             credit_limit = 50000000\nworkers = [{}]\ninsecure_simulated = true\nplatform = \"simulated\"\n\
             reattest_interval_s = 5\n\n[ton]\napi = \"{api}\"\nsettle_threshold = 1000000000\nworker_deposit = 100000000\n\
             worker_dispute_window_s = 3600\nmin_dispute_window_s = 40\n{extra}",
            dir.join("ledger.sqlite").display(),
            key.display(),
            workers.join(", ")
        ),
    )
    .unwrap();
    let child = std::process::Command::new(workspace_bin("cocoon-proxy"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("COCOON_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "the proxy");
    (Proc { child }, format!("http://127.0.0.1:{port}"))
}

/// A worker whose payout address is `payout`, priced as the network tests' workers.
fn paid_worker(dir: &std::path::Path, name: &str, payout: &cocoon_ton::TonAddress) -> (Proc, Proc, String) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[model]\nmax_batch = 16\nmax_queue = 16\n\n[pricing]\nprompt_per_1k = {}\ncompletion_per_1k = {}\n\
             payout_address = \"{}\"\n",
            PRICES.prompt_per_1k.0,
            PRICES.completion_per_1k.0,
            payout.to_base64_url_flags(true, false)
        ),
    )
    .unwrap();
    let sock = dir.join(format!("{name}.sock"));
    let enclave = start_enclave_with(&sock, 0, Some(&config));
    let (host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
    (enclave, host, url)
}

/// Hole 2: an unknown key was balance 0 and could spend `credit_limit`, and
/// every charge, paid or not, was owed to the worker. A worker colluding with
/// throwaway keys drained the proxy's wallet by about `credit_limit` a key.
/// Now credit exists only against a channel deposit seen on chain, and a
/// worker is owed only what its clients paid for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_colluding_with_fresh_keys_cannot_drain_the_proxy() {
    let Parties { _local, api, chain, dir, client, proxy, worker } = parties("adv-collusion", &[], 31, 20).await;
    let ((client_key_file, client_wallet), (proxy_key, proxy_wallet), (worker_key, worker_wallet)) =
        (client, proxy, worker);
    let balance = |a: cocoon_ton::TonAddress| {
        let chain = chain.clone();
        async move { chain.account(&a).await.unwrap().balance }
    };
    let fees = || {
        let chain = chain.clone();
        async move { chain.local("fees", json!({})).await.unwrap()["fees"].as_str().unwrap().parse::<u64>().unwrap() }
    };
    let wallets = [client_wallet.clone(), proxy_wallet.clone(), worker_wallet.clone()];
    let mut start = 0;
    for w in &wallets {
        start += balance(w.clone()).await;
    }
    let fees0 = fees().await;
    let (_enclave, _host, worker_url) = paid_worker(&dir, "colluder", &worker_wallet);
    let (_proxy, proxy) = ton_proxy(&dir, &proxy_key, &api, &[&worker_url], "");
    wait_admitted(&proxy, 1).await;

    // Twenty throwaway keys, each asking for answers on credit: refused before any work.
    let worker = routed_worker(&proxy, &[]).await;
    for i in 0..20u8 {
        let key = SigningKey::from_bytes(&[100 + i; 32]);
        let refused = free_ride(&worker, &key, 40_000_000, "spend the proxy's credit").await.unwrap_err();
        assert!(
            matches!(&refused, ClientError::Status { status: 402, body, .. } if body.contains("insufficient_funds")),
            "key {i}: {refused}"
        );
    }
    let payee = urlencoding::encode(&worker_wallet.to_hex()).into_owned();
    let (status, body) = get(&proxy, &format!("/v1/payouts?payee={payee}")).await;
    assert_eq!(status, 404, "nothing was paid for, so nothing is owed: {body}");

    // A client with a channel on chain gets credit up to its deposit, and uses it without paying.
    let channel_file = dir.join("channel.json");
    open_channel(&api, &client_key_file, &proxy_wallet, "1", 3600, &channel_file);
    let descriptor: Value = serde_json::from_slice(&std::fs::read(&channel_file).unwrap()).unwrap();
    let client = SigningKey::from_bytes(&[31; 32]);
    let params: cocoon_ton::channel::ChannelDescriptor = serde_json::from_value(descriptor.clone()).unwrap();
    let channel = params.params().unwrap().address().unwrap();
    let binding = params.binding().unwrap();
    let voucher = |total: u64| cocoon_ton::Voucher { channel: channel.clone(), binding, total }.sign(&client).unwrap();
    let (status, body) = post_voucher_json(&proxy, &json!({"channel": descriptor, "voucher": voucher(0)})).await;
    assert_eq!(status, 200, "{body}");
    let mut charged = 0u64;
    for i in 0..3 {
        let got = free_ride(&worker, &client, 10_000_000, &format!("answer {i} on credit")).await.unwrap();
        assert_eq!((got.status, got.receipt), (200, true), "{got:?}");
        charged = ledger_json(&dir)["totals"]["charged"].as_u64().unwrap();
    }
    assert!(charged > 0);
    let (status, body) = get(&proxy, &format!("/v1/payouts?payee={payee}")).await;
    assert_eq!(status, 404, "charges on credit are not paid yet, so not owed: {body}");

    // The client pays with a voucher: now the worker is owed exactly its share, and claims it.
    let (status, body) = post_voucher_json(&proxy, &json!({"channel": descriptor, "voucher": voucher(charged)})).await;
    assert_eq!((status, body["credited"].as_u64()), (200, Some(charged)), "{body}");
    let l = assert_ledger_adds_up(&dir);
    let earned = l["totals"]["worker_earnings"].as_u64().unwrap();
    let payouts = dir.join("payouts");
    let out = run_ok(
        std::process::Command::new(workspace_bin("cocoon"))
            .args(["payouts", "--proxy", &proxy, "--claim", "--min-claim", "0"])
            .arg("--key")
            .arg(&worker_key)
            .arg("--dir")
            .arg(&payouts)
            .env("COCOON_TON_API", &api),
    );
    assert!(out.contains("claimed"), "{out}");
    let held = cocoon_client::payouts::held(&payouts).unwrap();
    assert_eq!(held[0].voucher.total, earned, "the worker is owed exactly what the client paid for");

    // The proxy claims the client's channel; wallets, channels and fees add up to the nanoTON.
    run_ok(
        std::process::Command::new(workspace_bin("cocoon-proxy"))
            .arg("settle")
            .arg("--all")
            .arg("--config")
            .arg(dir.join("proxy.toml")),
    );
    let client_state =
        cocoon_ton::actions::channel_state(&chain, &params.params().unwrap()).await.unwrap().expect("deployed");
    let worker_state = cocoon_ton::actions::channel_state(&chain, &held[0].channel.params().unwrap())
        .await
        .unwrap()
        .expect("deployed");
    assert_eq!(client_state.claimed, charged);
    assert_eq!(worker_state.claimed, earned);
    let mut end = 0;
    for w in &wallets {
        end += balance(w.clone()).await;
    }
    assert_eq!(start, end + client_state.balance + worker_state.balance + (fees().await - fees0));
}

/// Hole 1, the attribution: a worker is quarantined only on proof of its own
/// fault. A host that strips the proxy's cap on the way to its enclave lets
/// the answer run long; the receipt (signed inside the enclave) says no cap
/// arrived, so the proxy blames that worker, and still charges the client no
/// more than it signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_strips_the_proxys_cap_gets_its_worker_quarantined_and_the_client_pays_its_maximum() {
    let dir = temp_dir("adv-strip-cap");
    let honest = TestWorker::start(&dir, "honest", 0);
    let greedy = TestWorker::start(&dir, "greedy", 0);
    // Same length, so the request stays framed: the enclave sees an unknown header instead.
    let greedy_url = rewriting_relay(&greedy.url, b"cocoon-worker-cap:", b"x-cocoon-wkr-capx:").await;
    let (_proxy, proxy) = dev_proxy(&dir, &[&honest.url, &greedy_url]);
    wait_admitted(&proxy, 2).await;
    let key = client_key(9);
    deposit(&dir, &key, 100_000_000);

    // 200 words: 200 prompt and 200 completion tokens cost 800,000 at these prices.
    let prompt: String = (0..200).map(|i| format!("w{i} ")).collect();
    let max_cost = 500_000;
    let budget = Commission::from_ppm(COMMISSION_PPM).unwrap().worker_budget(NanoTon(max_cost));
    let greedy_id = registry_id(&greedy_url);
    let mut seen = (false, false);
    for _ in 0..20 {
        let worker = routed_worker(&proxy, &[]).await;
        let on_greedy = matches!(worker.route(), Route::ViaProxy { worker_id, .. } if *worker_id == greedy_id);
        let got = free_ride(&worker, &key, max_cost, &prompt).await.unwrap();
        assert!(got.receipt, "{got:?}");
        let words = got.text.split_whitespace().count() as u32;
        let cost = PRICES.cost(200, words);
        if on_greedy {
            assert!(cost > budget, "the stripped cap let the answer run past the budget: {cost} <= {budget}");
            seen.0 = true;
            break;
        }
        assert!(cost <= budget, "the honest worker stopped at the cap: {cost} > {budget}");
        seen.1 = true;
    }
    assert!(seen.0, "the greedy worker was never routed to");
    let l = assert_ledger_adds_up(&dir);
    for c in l["accounts"].as_array().unwrap() {
        assert!(c["charged"].as_u64().unwrap() <= max_cost * 20, "{c}");
    }
    let charges = charge_rows_json(&dir);
    assert!(
        charges.iter().all(|c| c["charge"].as_u64().unwrap() <= max_cost),
        "never above the signed maximum: {charges:?}"
    );
    let records = worker_records(&proxy).await;
    let state = |url: &str| records.iter().find(|w| w["url"] == url).unwrap()["state"].clone();
    assert_eq!(state(&greedy_url), "quarantined", "{records:?}");
    assert_eq!(state(&honest.url), "up", "{records:?}");
    // The honest worker serves everyone from now on.
    let (runner, _) = funded_runner(&dir, &proxy, 1, 10, 1_000_000_000).await;
    let (served, workers) = honest_burst(&runner, 0, 10).await;
    assert_eq!((served, workers.into_iter().collect::<Vec<_>>()), (10, vec![registry_id(&honest.url)]));
}

/// `cocoon` with the chain at `api`.
/// `cocoon serve` through `proxy`, paying through the channel in `channel`; its base URL.
fn serve_paying(api: &str, proxy: &str, key: &std::path::Path, channel: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let child = cocoon_cmd(api, &["serve", "--proxy", proxy, "--insecure-simulated"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--key")
        .arg(key)
        .arg("--channel")
        .arg(channel)
        .env("COCOON_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "cocoon serve");
    (Proc { child }, format!("http://127.0.0.1:{port}"))
}

/// Sends `voucher`'s claim from `payee` straight to the contract, skipping
/// every check the tools make first: what the contract itself does with it.
async fn raw_claim(
    chain: &cocoon_ton::toncenter::Toncenter,
    payee: &cocoon_ton::wallet::Wallet,
    channel: &cocoon_ton::TonAddress,
    voucher: &cocoon_ton::SignedVoucher,
) {
    let message = cocoon_ton::wallet::Outgoing {
        dest: channel.clone(),
        value: cocoon_ton::actions::GAS_VALUE,
        bounce: true,
        body: voucher.claim_body(0).unwrap(),
        state_init: None,
    };
    payee.send(chain, vec![message]).await.unwrap();
}

/// Hole 4: a voucher named only its channel's address. v4R2 addresses are the
/// same on testnet and mainnet, and an account deleted and deployed again
/// starts from nothing claimed, so a voucher paid once could be paid again
/// elsewhere. Now it names the network's global id and the channel's
/// instance: refused by the tools and by the contract on any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_pays_on_one_network_and_one_channel_instance_only() {
    let mainnet = start_local_chain();
    let testnet = start_local_chain_with(&["--global-id", "-3"]);
    let dir = temp_dir("adv-replay");
    let (payer_key, payer_wallet) = wallet_key(&dir, "payer.key", 41);
    let (payee_key, payee_wallet) = wallet_key(&dir, "payee.key", 42);
    let payee = cocoon_ton::wallet::Wallet::from_seed(&[42; 32]).unwrap();
    let mut channels = Vec::new();
    for (name, chain) in [("mainnet", &mainnet), ("testnet", &testnet)] {
        let api = chain.1.clone();
        let ton = cocoon_ton::toncenter::Toncenter::new(&api, None).unwrap();
        for w in [&payer_wallet, &payee_wallet] {
            ton.local("airdrop", json!({ "address": w.to_hex(), "amount": (5 * TON).to_string() })).await.unwrap();
        }
        // The same payer, payee and channel id: the same address on both networks.
        let file = dir.join(format!("{name}.json"));
        run_ok(
            cocoon_cmd(&api, &["channel", "open", "--payee", &payee_wallet.to_hex(), "--amount", "2"])
                .args(["--channel-id", "7", "--dispute-window", "3600", "--key"])
                .arg(&payer_key)
                .arg("--out")
                .arg(&file),
        );
        let d: cocoon_ton::channel::ChannelDescriptor = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        channels.push((api, ton, file, d));
    }
    let (m, t) = (&channels[0], &channels[1]);
    assert_eq!(m.3.address, t.3.address, "one address on both networks");
    assert_eq!(
        (m.3.binding.unwrap().global_id, t.3.binding.unwrap().global_id),
        (-239, -3),
        "each file records its network"
    );

    // A voucher for 1 TON on mainnet, claimed there.
    let voucher_file = dir.join("voucher.json");
    let voucher = run_ok(
        cocoon_cmd(&m.0, &["channel", "voucher"])
            .arg(&m.2)
            .args(["--total", &TON.to_string(), "--key"])
            .arg(&payer_key),
    );
    std::fs::write(&voucher_file, &voucher).unwrap();
    run_ok(cocoon_cmd(&m.0, &["channel", "claim"]).arg(&m.2).arg(&voucher_file).arg("--key").arg(&payee_key));
    let signed: cocoon_ton::SignedVoucher = serde_json::from_str(&voucher).unwrap();
    let channel = m.3.params().unwrap().address().unwrap();

    // On testnet: the tool refuses to send it, and the contract refuses it when sent anyway.
    let refused = refused_claim(&t.0, &t.2, &voucher_file, &payee_key);
    assert!(refused.contains("network -3"), "{refused}");
    raw_claim(&t.1, &payee, &channel, &signed).await;
    let state = cocoon_ton::actions::channel_state(&t.1, &t.3.params().unwrap()).await.unwrap().unwrap();
    assert_eq!(state.claimed, 0, "testnet's channel paid nothing for mainnet's voucher");

    // On mainnet, the channel is deleted (as storage fees do) and deployed again at its address.
    let ton = &m.1;
    let params = m.3.params().unwrap();
    run_ok(cocoon_cmd(&m.0, &["channel", "close"]).arg(&m.2).arg("--key").arg(&payer_key));
    ton.local("advance", json!({ "seconds": 3600 })).await.unwrap();
    run_ok(cocoon_cmd(&m.0, &["channel", "finalize"]).arg(&m.2).arg("--key").arg(&payer_key));
    ton.local("delete", json!({ "address": channel.to_hex() })).await.unwrap();
    assert!(cocoon_ton::actions::channel_state(ton, &params).await.unwrap().is_none());
    let again = dir.join("again.json");
    run_ok(
        cocoon_cmd(&m.0, &["channel", "open", "--payee", &payee_wallet.to_hex(), "--amount", "2"])
            .args(["--channel-id", "7", "--dispute-window", "3600", "--key"])
            .arg(&payer_key)
            .arg("--out")
            .arg(&again),
    );
    let redeployed = cocoon_ton::actions::channel_state(ton, &params).await.unwrap().unwrap();
    assert_eq!((redeployed.claimed, redeployed.closed), (0, false));
    assert_ne!(redeployed.instance, m.3.binding.unwrap().instance, "a new instance");
    let refused = refused_claim(&m.0, &again, &voucher_file, &payee_key);
    assert!(refused.contains("instance"), "{refused}");
    raw_claim(ton, &payee, &channel, &signed).await;
    let state = cocoon_ton::actions::channel_state(ton, &params).await.unwrap().unwrap();
    assert_eq!(state.claimed, 0, "the redeployed channel paid nothing for the old voucher");
    // A voucher for the new instance pays as usual.
    let fresh = run_ok(
        cocoon_cmd(&m.0, &["channel", "voucher"]).arg(&again).args(["--total", "1000", "--key"]).arg(&payer_key),
    );
    std::fs::write(&voucher_file, &fresh).unwrap();
    run_ok(cocoon_cmd(&m.0, &["channel", "claim"]).arg(&again).arg(&voucher_file).arg("--key").arg(&payee_key));
}

/// Hole 3: the proxy took any close window for its channels to workers, 0
/// included; `cocoon payouts` never looked at it, never watched for a close,
/// and left vouchers under `--min-claim` unclaimed. A window-0 channel let the
/// payer close and finalize in one second, before the worker could claim.
/// Now the proxy refuses such a config, payees refuse such channels, and
/// `cocoon payouts --watch` claims everything vouched once a close is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_claims_everything_vouched_as_soon_as_its_channel_is_closing() {
    let Parties { _local, api, chain, dir, client, proxy, worker } = parties("adv-close", &[], 51, 20).await;
    let ((client_key_file, _), (proxy_key, proxy_wallet), (worker_key, worker_wallet)) = (client, proxy, worker);
    let (_enclave, _host, worker_url) = paid_worker(&dir, "worker", &worker_wallet);

    // A proxy that would give its workers no time to claim does not start.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let port = free_port();
    std::fs::write(
        bad.join("proxy.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\nledger = \"{}\"\naccount_key = \"{}\"\nworkers = [\"{worker_url}\"]\n\
             insecure_simulated = true\nplatform = \"simulated\"\n\n[ton]\napi = \"{api}\"\nworker_dispute_window_s = 0\n",
            bad.join("ledger.sqlite").display(),
            proxy_key.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(workspace_bin("cocoon-proxy"))
        .args(["serve", "--config"])
        .arg(bad.join("proxy.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker_dispute_window_s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A worker refuses a voucher on a channel with a window shorter than it needs.
    let short = dir.join("short.json");
    open_channel(&api, &proxy_key, &worker_wallet, "1", 0, &short);
    let descriptor: Value = serde_json::from_slice(&std::fs::read(&short).unwrap()).unwrap();
    let voucher: Value = serde_json::from_str(&run_ok(
        cocoon_cmd(&api, &["channel", "voucher"]).arg(&short).args(["--total", "1000", "--key"]).arg(&proxy_key),
    ))
    .unwrap();
    let held = dir.join("held");
    std::fs::create_dir_all(&held).unwrap();
    std::fs::write(held.join("short.json"), json!({"channel": descriptor, "voucher": voucher}).to_string()).unwrap();
    let out = cocoon_cmd(&api, &["payouts", "--claim", "--min-claim", "0", "--key"])
        .arg(&worker_key)
        .arg("--dir")
        .arg(&held)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--min-dispute-window"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = cocoon_ton::actions::channel_state(
        &chain,
        &serde_json::from_value::<cocoon_ton::channel::ChannelDescriptor>(descriptor).unwrap().params().unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(state.claimed, 0);

    // The real proxy (window 3600 s) pays the worker for a client's paid answers.
    let (_proxy, proxy) = ton_proxy(&dir, &proxy_key, &api, &[&worker_url], "");
    wait_admitted(&proxy, 1).await;
    let channel_file = dir.join("channel.json");
    open_channel(&api, &client_key_file, &proxy_wallet, "1", 3600, &channel_file);
    let (_serve, runner) = serve_paying(&api, &proxy, &client_key_file, &channel_file);
    let (served, _) = honest_burst(&runner, 0, 6).await;
    assert_eq!(served, 6);
    // The worker watches; its --min-claim is far above what it earned, so nothing is claimed yet.
    let payouts = dir.join("payouts");
    let watcher = Proc {
        child: cocoon_cmd(
            &api,
            &["payouts", "--proxy", &proxy, "--claim", "--min-claim", "1000000000000", "--watch", "1"],
        )
        .arg("--key")
        .arg(&worker_key)
        .arg("--dir")
        .arg(&payouts)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let held = loop {
        if let Some(h) = cocoon_client::payouts::held(&payouts).unwrap().into_iter().next() {
            break h;
        }
        assert!(std::time::Instant::now() < deadline, "the watcher fetched no voucher");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let worker_channel = held.channel.params().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(cocoon_ton::actions::channel_state(&chain, &worker_channel).await.unwrap().unwrap().claimed, 0);

    // The proxy's operator asks to close the worker's channel: the watcher claims at once.
    let worker_channel_file = dir.join("worker-channel.json");
    std::fs::write(&worker_channel_file, serde_json::to_vec(&held.channel).unwrap()).unwrap();
    run_ok(cocoon_cmd(&api, &["channel", "close"]).arg(&worker_channel_file).arg("--key").arg(&proxy_key));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = cocoon_ton::actions::channel_state(&chain, &worker_channel).await.unwrap().unwrap();
        if s.claimed == held.voucher.total {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the watcher did not claim a closing channel: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(watcher);
    let l = assert_ledger_adds_up(&dir);
    assert_eq!(
        held.voucher.total,
        l["totals"]["worker_earnings"].as_u64().unwrap(),
        "every answer paid for was vouched"
    );
}

/// Hole 7: the registry was decorative; the proxy admitted on local policy
/// files alone and `cocoon serve` trusted any proxy whose evidence verified.
/// Now, with a registry configured, a worker whose model it does not list is
/// refused, a client refuses a proxy it does not list (or lists with another
/// commission), and a removal takes effect at the next read, without restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_decides_which_workers_and_proxies_are_used() {
    use cocoon_client::allowlist::Watched;
    use cocoon_client::serve::Runner;
    let local = start_local_chain();
    let api = local.1.clone();
    let chain = cocoon_ton::toncenter::Toncenter::new(&api, None).unwrap();
    let dir = temp_dir("adv-registry");
    let (owner_key, owner_wallet) = wallet_key(&dir, "owner.key", 61);
    let (proxy_key, _) = wallet_key(&dir, "proxy.key", 62);
    chain.local("airdrop", json!({ "address": owner_wallet.to_hex(), "amount": (5 * TON).to_string() })).await.unwrap();
    let registry = cocoon_ton::registry::address(&owner_wallet).unwrap();
    let reg = |args: &[&str]| {
        let mut c = cocoon_cmd(&api, &["registry"]);
        c.args(args).arg("--key").arg(&owner_key);
        c
    };

    // Two workers, one serving a model the registry lists, one another model.
    let listed = TestWorker::start(&dir, "listed", 0);
    let sock = dir.join("other.sock");
    let config = priced_config(&dir, "other", (PRICES.prompt_per_1k.0, PRICES.completion_per_1k.0), 16);
    let _other_enclave = start_enclave_serving(&sock, 0, Some(&config), "unlisted-echo");
    let (_other_host, other_url) = start_host(&format!("unix:{}", sock.display()), &[]);
    let model = hex::encode(cocoon_tests::echo_engine::model_digest(MODEL_ID));
    run_ok(&mut reg(&["add-model", &model]));

    // The proxy, listed at its endpoint with its commission.
    let port = free_port();
    let proxy_url = format!("http://127.0.0.1:{port}");
    let account = hex::encode(SigningKey::from_bytes(&[62; 32]).verifying_key().to_bytes());
    let commission = COMMISSION_PPM.to_string();
    run_ok(&mut reg(&["add-proxy", "--account", &account, "--commission-ppm", &commission, "--endpoint", &proxy_url]));
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nledger = \"{}\"\naccount_key = \"{}\"\ncommission_ppm = {COMMISSION_PPM}\n\
             workers = [\"{}\", \"{other_url}\"]\ninsecure_simulated = true\nplatform = \"simulated\"\nreattest_interval_s = 1\n\n\
             [ton]\napi = \"{api}\"\nregistry = \"{}\"\nregistry_refresh_s = 1\n",
            dir.join("ledger.sqlite").display(),
            proxy_key.display(),
            listed.url,
            registry.to_hex()
        ),
    )
    .unwrap();
    let _proxy = Proc {
        child: std::process::Command::new(workspace_bin("cocoon-proxy"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("COCOON_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_for_port(port, "the proxy");
    wait_admitted(&proxy_url, 1).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let urls: Vec<Value> = worker_records(&proxy_url).await.iter().map(|w| w["url"].clone()).collect();
    assert_eq!(urls, vec![json!(listed.url)], "the unlisted model's worker is never admitted");
    let (status, body) = raw_http(
        &proxy_url,
        format!(
            "POST /v1/workers HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{}",
            json!({"url": other_url}).to_string().len(),
            json!({"url": other_url})
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is not in the registry"), "{body}");

    // A client that uses the registry: served through the listed proxy.
    let watched = Watched::start(chain.clone(), registry.clone(), std::time::Duration::from_secs(1)).await.unwrap();
    tokio::spawn(watched.clone().refresh(|| {}));
    let key = client_key(63);
    deposit(&dir, &key, 1_000_000_000);
    let via = |key: SigningKey, proxy: String| async move {
        Runner::via_proxy(&proxy, Policy::insecure_simulated(), EndorsementSources::default(), key, NanoTon(10_000_000))
            .await
            .unwrap()
    };
    let runner = via(key.clone(), proxy_url.clone()).await.with_registry(watched.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cocoon_client::serve::serve(listener, std::sync::Arc::new(runner), std::future::pending()));
    assert_eq!(honest_burst(&runner_url, 0, 5).await.0, 5);

    // The same proxy reached at another address than listed, and a proxy the registry
    // does not list at all: refused before anything is sent.
    let elsewhere = via(key.clone(), format!("http://localhost:{port}")).await.with_registry(watched.clone());
    let e = elsewhere.err().expect("refused").to_string();
    assert!(e.contains("endpoint"), "{e}");
    let dir2 = temp_dir("adv-registry-2");
    key_file(&dir2, "proxy.key", 64);
    let (_stranger, stranger_url) = dev_proxy(&dir2, &[&listed.url]);
    let e =
        via(key.clone(), stranger_url.clone()).await.with_registry(watched.clone()).err().expect("refused").to_string();
    assert!(e.contains("not in the registry"), "{e}");
    // Listed with another commission than its terms state: refused too.
    let stranger_account = hex::encode(SigningKey::from_bytes(&[64; 32]).verifying_key().to_bytes());
    run_ok(&mut reg(&[
        "add-proxy",
        "--account",
        &stranger_account,
        "--commission-ppm",
        "1000",
        "--endpoint",
        &stranger_url,
    ]));
    watched.refresh_once().await.unwrap();
    let e = via(key.clone(), stranger_url).await.with_registry(watched.clone()).err().expect("refused").to_string();
    assert!(e.contains("commission"), "{e}");

    // The model is removed: the proxy evicts its worker without a restart.
    run_ok(&mut reg(&["remove-model", &model]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !worker_records(&proxy_url).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker was not evicted: {:?}",
            worker_records(&proxy_url).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The proxy is removed: the client stops using it at its next read.
    run_ok(&mut reg(&["add-model", &model]));
    run_ok(&mut reg(&["remove-proxy", &account]));
    watched.refresh_once().await.unwrap();
    let (status, body) =
        post_json(&HttpClient::default(), &runner_url, "/v1/chat/completions", &chat_body("a b", false)).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("proxy_not_listed"), "{body}");
    assert_ledger_adds_up(&dir);
}

/// Hole 5: the public payment endpoints called the chain API on every request
/// and shared its quota (and the wallet) with settlement, so a flood during a
/// client's close window could keep the proxy's claim failing until the
/// client took the vouched money back. Now they are limited per key and share
/// a small chain budget, answered at once when it is spent, and a closing
/// channel's claim is retried until its window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlement_lands_within_the_window_during_a_flood_of_public_requests() {
    // toncenter's quota, emulated: 20 calls a second, then 429.
    let Parties { _local, api, chain, dir, client, proxy, worker } =
        parties("adv-flood", &["--rate-limit", "20"], 71, 5).await;
    let ((client_key_file, _), (proxy_key, proxy_wallet), (_worker_key, worker_wallet)) = (client, proxy, worker);
    let (_enclave, _host, worker_url) = paid_worker(&dir, "worker", &worker_wallet);
    let (_proxy, proxy) = ton_proxy(&dir, &proxy_key, &api, &[&worker_url], "");
    wait_admitted(&proxy, 1).await;
    let channel_file = dir.join("channel.json");
    open_channel(&api, &client_key_file, &proxy_wallet, "1", 40, &channel_file);
    let (serve, runner) = serve_paying(&api, &proxy, &client_key_file, &channel_file);
    assert_eq!(honest_burst(&runner, 0, 6).await.0, 6);
    drop(serve);
    let vouched = loop {
        let l = ledger_json(&dir);
        let total = l["channels"][0]["voucher_total"].as_u64().unwrap_or(0);
        if total == l["totals"]["charged"].as_u64().unwrap() && total > 0 {
            break total;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    // The flood: payouts for the worker and vouchers on channels nobody opened, as fast as answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let payee = urlencoding::encode(&worker_wallet.to_hex()).into_owned();
    let descriptor: cocoon_ton::channel::ChannelDescriptor =
        serde_json::from_slice(&std::fs::read(&channel_file).unwrap()).unwrap();
    let mut flooders = Vec::new();
    for i in 0..16u64 {
        let (stop, statuses, proxy, payee, descriptor) =
            (stop.clone(), statuses.clone(), proxy.clone(), payee.clone(), descriptor.clone());
        flooders.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let status = if i % 2 == 0 {
                    get(&proxy, &format!("/v1/payouts?payee={payee}")).await.0
                } else {
                    // A channel of a fresh payer to the proxy: unknown, so it would need the chain.
                    let key = SigningKey::from_bytes(&[(i * 1000 + n % 1000) as u8; 32]);
                    let mut p = descriptor.params().unwrap();
                    p.payer_key = key.verifying_key().to_bytes();
                    p.channel_id = i * 1_000_000 + n;
                    let d = cocoon_ton::channel::ChannelDescriptor::bound(&p, descriptor.binding.unwrap()).unwrap();
                    let v = cocoon_ton::Voucher {
                        channel: p.address().unwrap(),
                        binding: descriptor.binding.unwrap(),
                        total: 1,
                    }
                    .sign(&key)
                    .unwrap();
                    post_voucher_json(&proxy, &json!({"channel": d, "voucher": v})).await.0
                };
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // The client asks to close: the proxy must claim everything vouched within the 40 s window.
    let closed_at = std::time::Instant::now();
    run_ok(cocoon_cmd(&api, &["channel", "close"]).arg(&channel_file).arg("--key").arg(&client_key_file));
    let params = descriptor.params().unwrap();
    loop {
        let s = cocoon_ton::actions::channel_state(&chain, &params).await;
        if let Ok(Some(s)) = s
            && s.claimed == vouched
        {
            break;
        }
        assert!(closed_at.elapsed() < std::time::Duration::from_secs(40), "the claim did not land within the window");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let took = closed_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let refused: u64 = statuses.iter().filter(|(s, _)| [429, 503].contains(*s)).map(|(_, n)| n).sum();
    let total: u64 = statuses.values().sum();
    assert!(refused * 2 > total, "most of the flood was turned away at once: {statuses:?}");
    // The claim task counts it once its transaction is seen, a moment after the chain shows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = get(&proxy, "/metrics").await;
        if metrics.contains("cocoon_proxy_settlement_claims_paid_total 1") {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("cocoon_proxy_settlement_claims_missed_total 0"), "{metrics}");
    eprintln!(
        "claimed {vouched} nanoTON {} ms after the close request, under a flood of {total} requests ({statuses:?})",
        took.as_millis()
    );
    assert_ledger_adds_up(&dir);
}

/// Hole 8: a stream the client abandoned before the trailer was never
/// charged, though the worker generated it. Now closing the stream stops the
/// generation, the enclave signs a receipt for what it generated, and the
/// proxy fetches and charges it, within what the client signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_abandoned_midway_is_charged_for_what_was_generated() {
    let dir = temp_dir("adv-abandon");
    let slow = TestWorker::start(&dir, "slow", 40);
    let (_proxy, proxy) = dev_proxy(&dir, &[&slow.url]);
    wait_admitted(&proxy, 1).await;
    let key = client_key(81);
    deposit(&dir, &key, 100_000_000);
    let prompt: String = (0..60).map(|i| format!("w{i} ")).collect();
    let worker = routed_worker(&proxy, &[]).await;
    let body = json!({"model": MODEL_ID, "stream": true, "messages": [{"role": "user", "content": prompt}]});
    let inner = InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes());
    let max_cost = 10_000_000;
    let mut stream = worker
        .stream_with(&inner, |hash| ClientAuthorization::sign(&key, hash, NanoTon(max_cost)).header_values().into())
        .await
        .unwrap();
    let hash = hex::encode(stream.request_hash());
    let mut pieces = 0;
    while pieces < 4 {
        if let Some(ResponseEvent::Content(c)) = stream.next_event().await.unwrap() {
            pieces += String::from_utf8_lossy(&c).matches("\"content\":\"W").count();
        }
    }
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let charge = loop {
        if let Some(c) = charge_rows_json(&dir).into_iter().find(|c| c["request_hash"] == json!(hash)) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned stream was never charged");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let completion = charge["completion_tokens"].as_u64().unwrap();
    assert!((4..60).contains(&completion), "charged for what was generated before the stream closed: {charge}");
    assert_eq!(charge["prompt_tokens"], 60);
    let expected = Commission::from_ppm(COMMISSION_PPM).unwrap().charge(PRICES.cost(60, completion as u32));
    assert_eq!(charge["charge"].as_u64().unwrap(), expected.0, "{charge}");
    assert!(expected.0 <= max_cost);
    let (_, metrics) = get(&proxy, "/metrics").await;
    assert!(metrics.contains("cocoon_proxy_abandoned_charged_total 1"), "{metrics}");
    assert_eq!(worker_records(&proxy).await[0]["state"], "up", "the worker is not blamed for the client leaving");
    assert_ledger_adds_up(&dir);
}
