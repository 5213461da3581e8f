//! Payments on TON end to end, with real processes on loopback and a local
//! emulated chain (`contracts/chain/server.js`: @ton/sandbox behind the
//! toncenter v2 API): a client opens a channel to the proxy's wallet and runs
//! `cocoon serve --channel`; requests flow through the proxy to a worker; the
//! client pays each verified charge with a voucher; the proxy settles the
//! client's channel on chain and funds a channel to the worker; the worker
//! fetches its voucher with `cocoon payouts` and claims it. The chain's
//! balances then equal the ledger's to the nanoTON. Needs Node and
//! `contracts/node_modules` (`make contracts-deps`).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cocoon_client::http::HttpClient;
use cocoon_ton::channel::{ChannelDescriptor, ChannelState};
use cocoon_ton::toncenter::Toncenter;
use cocoon_ton::{TonAddress, actions};
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::chain::*;
use support::*;

const COMMISSION_PPM: u64 = 100_000;

fn ledger(dir: &Path) -> Value {
    let out = run_ok(
        Command::new(workspace_bin("cocoon-proxy"))
            .arg("ledger")
            .arg("--db")
            .arg(dir.join("ledger.sqlite"))
            .arg("--json"),
    );
    serde_json::from_str(&out).unwrap()
}

async fn state(chain: &Toncenter, d: &ChannelDescriptor) -> ChannelState {
    actions::channel_state(chain, &d.params().unwrap()).await.unwrap().expect("deployed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pay_proxies_pay_workers_and_the_chain_agrees_with_the_ledger() {
    let local = start_local_chain();
    let api = local.1.clone();
    let chain = Toncenter::new(&api, None).unwrap();
    let dir = temp_dir("payments");
    let (client_key, client_wallet) = wallet_key(&dir, "client.key", 11);
    let (proxy_key, proxy_wallet) = wallet_key(&dir, "proxy.key", 12);
    let (worker_key, worker_wallet) = wallet_key(&dir, "worker.key", 13);
    for (w, amount) in [(&client_wallet, 20 * TON), (&proxy_wallet, 20 * TON), (&worker_wallet, TON)] {
        chain.local("airdrop", json!({ "address": w.to_hex(), "amount": amount.to_string() })).await.unwrap();
    }
    let balance = |a: TonAddress| {
        let chain = chain.clone();
        async move { chain.account(&a).await.unwrap().balance }
    };
    let fees = || {
        let chain = chain.clone();
        async move { chain.local("fees", json!({})).await.unwrap()["fees"].as_str().unwrap().parse::<u64>().unwrap() }
    };
    let start = [
        balance(client_wallet.clone()).await,
        balance(proxy_wallet.clone()).await,
        balance(worker_wallet.clone()).await,
    ];
    let fees0 = fees().await;

    // A worker paid at its own wallet (user-friendly form, as operators write it).
    let config = dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nmax_batch = 16\nmax_queue = 16\n\n[pricing]\nprompt_per_1k = 2000000\ncompletion_per_1k = 6000000\npayout_address = \"{}\"\n",
            worker_wallet.to_base64_url_flags(true, false)
        ),
    )
    .unwrap();
    let sock = dir.join("worker.sock");
    let _enclave = start_enclave_with(&sock, 1, Some(&config));
    let (_host, worker_url) = start_host(&format!("unix:{}", sock.display()), &[]);

    // The proxy, paid on TON, with a little credit so that a client pays after each answer.
    let proxy_port = free_port();
    let proxy_config = dir.join("proxy.toml");
    std::fs::write(
        &proxy_config,
        format!(
            "listen = \"127.0.0.1:{proxy_port}\"\nledger = \"{}\"\naccount_key = \"{}\"\ncommission_ppm = {COMMISSION_PPM}\n\
             credit_limit = 50000000\nworkers = [\"{worker_url}\"]\ninsecure_simulated = true\nplatform = \"simulated\"\n\
             reattest_interval_s = 5\n\n[ton]\napi = \"{api}\"\nsettle_threshold = 300000\nworker_deposit = 1000000000\n\
             worker_dispute_window_s = 3600\nmin_dispute_window_s = 40\n",
            dir.join("ledger.sqlite").display(),
            proxy_key.display()
        ),
    )
    .unwrap();
    let _proxy = Proc {
        child: Command::new(workspace_bin("cocoon-proxy"))
            .arg("serve")
            .arg("--config")
            .arg(&proxy_config)
            .env("COCOON_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_for_port(proxy_port, "the proxy");
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&proxy, "/v1/workers").await.1.contains("\"up\"") {
        assert!(Instant::now() < deadline, "the worker was not admitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let printed = run_ok(Command::new(workspace_bin("cocoon-proxy")).arg("wallet").arg("--config").arg(&proxy_config));
    assert!(printed.contains(&proxy_wallet.to_hex()), "{printed}");

    // The client opens a channel to the proxy's wallet and runs `cocoon serve` paying through it.
    let channel_file = dir.join("channel.json");
    let cocoon = |args: &[&str]| {
        let mut c = Command::new(workspace_bin("cocoon"));
        c.args(args).env("COCOON_TON_API", &api);
        c
    };
    run_ok(
        cocoon(&["channel", "open", "--payee", &proxy_wallet.to_hex(), "--amount", "5", "--dispute-window", "3600"])
            .arg("--key")
            .arg(&client_key)
            .arg("--out")
            .arg(&channel_file),
    );
    let client_channel: ChannelDescriptor = serde_json::from_slice(&std::fs::read(&channel_file).unwrap()).unwrap();
    // A channel to someone else is refused at start.
    let other = dir.join("other.json");
    let p = cocoon_ton::channel::ChannelParams { payee: worker_wallet.clone(), ..client_channel.params().unwrap() };
    std::fs::write(&other, serde_json::to_vec(&ChannelDescriptor::from_params(&p).unwrap()).unwrap()).unwrap();
    let refused = cocoon(&["serve", "--proxy", &proxy, "--insecure-simulated", "--listen", "127.0.0.1:1"])
        .arg("--key")
        .arg(&client_key)
        .arg("--channel")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the proxy's wallet"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let serve_port = free_port();
    let _serve = Proc {
        child: cocoon(&["serve", "--proxy", &proxy, "--insecure-simulated", "--max-cost", "20000000"])
            .args(["--listen", &format!("127.0.0.1:{serve_port}")])
            .arg("--key")
            .arg(&client_key)
            .arg("--channel")
            .arg(&channel_file)
            .env("COCOON_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_for_port(serve_port, "cocoon serve");

    // Requests, whole and streamed; each answer's verified cost is what the client pays.
    let http = HttpClient::default();
    let mut paid = 0u64;
    for i in 0..8 {
        let stream = i % 2 == 1;
        let body = json!({"model": cocoon_tests::echo_engine::MODEL_ID, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": format!("pay for answer number {i} please")}]});
        let req = http::Request::post(format!("http://127.0.0.1:{serve_port}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = http.send(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert_eq!(status, 200, "{text}");
        let cost = if stream {
            let usage = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .find(|d| d.contains("cost_nanoton"))
                .unwrap_or_else(|| panic!("{text}"));
            serde_json::from_str::<Value>(usage).unwrap()["cocoon"]["cost_nanoton"].as_u64().unwrap()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["cocoon"]["cost_nanoton"].as_u64().unwrap()
        };
        assert!(cost > 0);
        paid += cost;
    }

    // The client's vouchers credited exactly what it was charged. The proxy claimed on
    // chain once the vouchers passed its threshold (0.0003 TON here), and not after.
    let deadline = Instant::now() + Duration::from_secs(30);
    let claimed_at_threshold = loop {
        let l = ledger(&dir);
        let ch = &l["channels"][0];
        let claimed = ch["claimed"].as_u64().unwrap_or(0);
        if ch["voucher_total"] == json!(paid) && claimed > 0 {
            break claimed;
        }
        assert!(Instant::now() < deadline, "the client's vouchers were not credited and settled (paid {paid}): {l}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        claimed_at_threshold >= 300_000 && paid - claimed_at_threshold < 300_000,
        "{claimed_at_threshold} of {paid}"
    );

    // Vouchers the proxy refuses, crediting nothing: a forged signature, one above the deposit.
    let post_voucher = |voucher: cocoon_ton::SignedVoucher| {
        let body = json!({"channel": client_channel, "voucher": voucher});
        let proxy = proxy.clone();
        async move { support::net::post_voucher(&proxy, &body).await }
    };
    let channel_address = client_channel.params().unwrap().address().unwrap();
    let voucher = |seed: u8, total: u64| {
        cocoon_ton::Voucher { channel: channel_address.clone(), binding: client_channel.binding().unwrap(), total }
            .sign(&SigningKey::from_bytes(&[seed; 32]))
            .unwrap()
    };
    let (status, text) = post_voucher(voucher(99, paid + TON)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("signature"), "{text}");
    let (status, text) = post_voucher(voucher(11, 6 * TON)).await;
    assert_eq!(status, 402, "{text}");
    assert!(text.contains("exceeds the channel's deposit"), "{text}");
    let (status, text) = post_voucher(voucher(11, paid)).await;
    assert_eq!((status, text.contains("\"credited\":0")), (200, true), "{text}");
    assert_eq!(ledger(&dir)["totals"]["deposits"], json!(paid));

    // The client pays 0.0001 TON ahead: credited, below the threshold, so not claimed yet.
    let ahead = 100_000;
    let (status, text) = post_voucher(voucher(11, paid + ahead)).await;
    assert_eq!((status, text.contains(&format!("\"credited\":{ahead}"))), (200, true), "{text}");
    assert!(ledger(&dir)["channels"][0]["claimed"].as_u64().unwrap() < paid + ahead);

    // The client asks to close: the proxy's watcher records the close and claims the rest at
    // once, well within the window. (A claim of the voucher above may already be on its way,
    // started when the voucher came: wait for the watcher's record of the close as well.)
    run_ok(cocoon(&["channel", "close"]).arg(&channel_file).arg("--key").arg(&client_key));
    let deadline = Instant::now() + Duration::from_secs(40);
    let l = loop {
        let l = ledger(&dir);
        if l["channels"][0]["claimed"] == json!(paid + ahead) && l["channels"][0]["closing_since"] != json!(0) {
            break l;
        }
        assert!(Instant::now() < deadline, "the proxy did not claim a closing channel: {l}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A closing channel takes no more vouchers, even within its deposit.
    let (status, text) = post_voucher(voucher(11, paid + ahead + 1)).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("closing"), "{text}");
    let totals = &l["totals"];
    assert_eq!(totals["charged"], json!(paid));
    assert_eq!(totals["deposits"], json!(paid + ahead), "every voucher credited what it added, nothing more");
    assert_eq!(l["accounts"][0]["balance"], json!(ahead));
    let charged = paid;
    let earnings = totals["worker_earnings"].as_u64().unwrap();
    let commission = totals["commission"].as_u64().unwrap();
    assert_eq!(charged, earnings + commission);
    let client_state = state(&chain, &client_channel).await;
    assert_eq!(client_state.claimed, charged + ahead, "on chain, the proxy claimed exactly what the ledger credited");
    assert_ne!(client_state.closing_since, 0);
    assert_eq!(client_state.deposited, 5 * TON);
    let settled = run_ok(
        Command::new(workspace_bin("cocoon-proxy")).arg("settle").arg("--all").arg("--config").arg(&proxy_config),
    );
    assert!(settled.contains("no channel owes"), "{settled}");

    // The worker fetches its voucher, keeps it, and claims it.
    let payouts = dir.join("payouts");
    let out = run_ok(
        cocoon(&["payouts", "--proxy", &proxy, "--claim", "--min-claim", "0"])
            .arg("--key")
            .arg(&worker_key)
            .arg("--dir")
            .arg(&payouts),
    );
    assert!(out.contains("claimed"), "{out}");
    let held = cocoon_client::payouts::held(&payouts).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].voucher.total, earnings);
    let worker_state = state(&chain, &held[0].channel).await;
    assert_eq!(worker_state.claimed, earnings, "on chain, the worker claimed exactly the ledger's earnings");
    assert_eq!(worker_state.deposited, earnings + TON, "funded with its earnings plus worker_deposit");
    // Asking again changes nothing: the same total, nothing more to claim.
    let again = run_ok(
        cocoon(&["payouts", "--proxy", &proxy, "--claim", "--min-claim", "0"])
            .arg("--key")
            .arg(&worker_key)
            .arg("--dir")
            .arg(&payouts),
    );
    assert!(!again.contains("claimed "), "{again}");

    // Every nanoTON: wallets and channels now, plus every fee, equal the wallets before.
    let end = [
        balance(client_wallet.clone()).await,
        balance(proxy_wallet.clone()).await,
        balance(worker_wallet.clone()).await,
    ];
    let channels = client_state.balance + worker_state.balance;
    let fees = fees().await - fees0;
    assert_eq!(start.iter().sum::<u64>(), end.iter().sum::<u64>() + channels + fees);
    eprintln!(
        "client charged {charged} nanoTON (and paid {ahead} ahead) = worker earnings {earnings} + commission {commission}; chain fees {fees}; \
         client wallet {} -> {}, proxy wallet {} -> {}, worker wallet {} -> {}",
        start[0], end[0], start[1], end[1], start[2], end[2]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
