//! Past one proxy: `cocoon serve --registry` uses every proxy the registry
//! lists (as each presents itself), pays each through its own channel, and
//! fails over between them. Real processes on loopback and the local emulated
//! chain. Needs Node and `contracts/node_modules` (`make contracts-deps`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde_json::json;

use cocoon_client::http::HttpClient;
use support::chain::*;
use support::net::*;
use support::*;

/// A proxy paid on TON and bound to `registry`, its ledger in `dir`; its URL.
fn registry_proxy(dir: &Path, port: u16, key: &Path, api: &str, registry: &str, workers: &[&str]) -> Proc {
    let config = dir.join("proxy.toml");
    let workers: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nledger = \"{}\"\naccount_key = \"{}\"\ncommission_ppm = {COMMISSION_PPM}\n\
             credit_limit = 2000000000\nworkers = [{}]\ninsecure_simulated = true\nplatform = \"simulated\"\n\
             reattest_interval_s = 5\n\n[ton]\napi = \"{api}\"\nregistry = \"{registry}\"\nregistry_refresh_s = 1\n\
             settle_threshold = 100000000000\nworker_deposit = 100000000\nworker_dispute_window_s = 3600\n\
             min_dispute_window_s = 40\n",
            dir.join("ledger.sqlite").display(),
            key.display(),
            workers.join(", ")
        ),
    )
    .unwrap();
    let child = Command::new(workspace_bin("cocoon-proxy"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("COCOON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, "the proxy");
    Proc { child }
}

/// Requests in flight at the proxy, over its workers.
async fn in_flight(proxy: &str) -> u64 {
    workers_json(proxy).await["data"].as_array().unwrap().iter().map(|w| w["in_flight"].as_u64().unwrap_or(0)).sum()
}

/// Three proxies from a registry; the one carrying most streams is SIGKILLed
/// under 200 streamed requests through `cocoon serve`. A request that had
/// shown no content completes through another proxy (unseen by the app),
/// one that had ends with an error event, none breaks; later requests go to
/// the proxies left. Each
/// surviving proxy's ledger equals what the client vouched to it, to the
/// nanoTON, and the client vouched exactly the costs its apps were told. One
/// channel was given, one opened on first use within a budget that leaves the
/// third proxy without one (so unused); a restarted runner opens none, and
/// takes the killed proxy up again once it is back. A fourth proxy, listed
/// with another commission than its terms state, is left out and never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_killed_under_load_is_failed_over_and_each_proxy_is_paid_what_it_charged() {
    let local = start_local_chain();
    let api = local.1.clone();
    let chain = cocoon_ton::toncenter::Toncenter::new(&api, None).unwrap();
    let dir = temp_dir("proxies-failover");
    let (owner_key, owner_wallet) = wallet_key(&dir, "owner.key", 81);
    let (client_key, client_wallet) = wallet_key(&dir, "client.key", 82);
    for (w, amount) in [(&owner_wallet, 5 * TON), (&client_wallet, 20 * TON)] {
        chain.local("airdrop", json!({ "address": w.to_hex(), "amount": amount.to_string() })).await.unwrap();
    }
    let registry = cocoon_ton::registry::address(&owner_wallet).unwrap().to_hex();
    let reg = |args: &[&str]| {
        let mut c = cocoon_cmd(&api, &["registry"]);
        c.args(args).arg("--key").arg(&owner_key);
        c
    };
    run_ok(&mut reg(&[
        "add-model",
        &hex::encode(cocoon_tests::echo_engine::model_digest(cocoon_tests::echo_engine::MODEL_ID)),
    ]));

    // Two workers, each big enough for every stream of the test (the three
    // proxies count their load apart), with a 200 ms prefill: when the proxy
    // dies, some of its streams have shown tokens and some not yet.
    let a = TestWorker::prefilling(&dir, "a", 20, 64, 200);
    let b = TestWorker::prefilling(&dir, "b", 20, 64, 200);
    let mut proxies: Vec<(PathBuf, String, Option<Proc>)> = Vec::new();
    for i in 0..4u8 {
        let pdir = dir.join(format!("proxy{i}"));
        std::fs::create_dir_all(&pdir).unwrap();
        let (key, _) = wallet_key(&pdir, "proxy.key", 83 + i);
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let account = hex::encode(SigningKey::from_bytes(&[83 + i; 32]).verifying_key().to_bytes());
        // The fourth is listed with another commission than its terms state.
        let listed = if i == 3 { "1000".to_string() } else { COMMISSION_PPM.to_string() };
        run_ok(&mut reg(&["add-proxy", "--account", &account, "--commission-ppm", &listed, "--endpoint", &url]));
        let proc = registry_proxy(&pdir, port, &key, &api, &registry, &[&a.url, &b.url]);
        proxies.push((pdir, url, Some(proc)));
    }
    for (_, url, _) in &proxies {
        wait_admitted(url, 2).await;
    }

    // A channel to the first proxy, opened by hand; the runner opens one to
    // another on its first request there, and its budget allows only one.
    let channel0 = dir.join("channel0.json");
    open_channel(&api, &client_key, &wallet_key(&dir, "unused.key", 83).1, "2", 3600, &channel0);
    let opened = dir.join("channels");
    let serve_log = dir.join("serve.log");
    let port = free_port();
    let start_serve = || {
        let mut serve =
            cocoon_cmd(&api, &["serve", "--registry", &registry, "--registry-refresh", "1", "--insecure-simulated"]);
        serve.args(["--listen", &format!("127.0.0.1:{port}")]).arg("--key").arg(&client_key);
        serve.arg("--channel").arg(&channel0);
        serve.args(["--channel-budget", "2", "--channel-deposit", "2", "--channel-dispute-window", "3600"]);
        serve.arg("--channel-dir").arg(&opened).args(["--proxy-recheck", "1"]);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&serve_log).unwrap();
        let child = serve
            .env("COCOON_LOG", "warn,cocoon_client::serve=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, "cocoon serve");
        Proc { child }
    };
    let serve = start_serve();
    let runner = format!("http://127.0.0.1:{port}");
    let log = std::fs::read_to_string(&serve_log).unwrap();
    assert!(log.contains("left out: the registry lists this proxy commission"), "{log}");
    assert_eq!(log.matches("paid through a channel").count(), 1, "{log}");
    // Where each of the three proxies' channel is (or would be).
    let channels: Vec<PathBuf> = (0..3u8)
        .map(|i| match i {
            0 => channel0.clone(),
            _ => opened.join(format!(
                "proxy-{}.json",
                hex::encode(SigningKey::from_bytes(&[83 + i; 32]).verifying_key().to_bytes())
            )),
        })
        .collect();

    let http = HttpClient::default();
    let mut told = 0u64;
    for i in 0..12 {
        let Seen::Complete { cost } = stream_seen(&http, &runner, &prompt_for(i)).await else { panic!("warm-up") };
        told += cost;
    }
    let tasks = streams(&http, &runner, 200, 100, 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut load = Vec::new();
    for (_, url, _) in &proxies[..3] {
        load.push(in_flight(url).await);
    }
    let victim = (0..3).max_by_key(|&i| load[i]).unwrap();
    drop(proxies[victim].2.take());
    let (mut complete, mut after_tokens) = (0u64, 0u64);
    for t in tasks {
        match t.await.unwrap().expect("no request hangs") {
            Seen::Complete { cost } => {
                complete += 1;
                told += cost;
            }
            Seen::ErrorAfterTokens => after_tokens += 1,
            Seen::Broken(what) => panic!("a request failed where the app saw no token, or broke: {what}"),
        }
    }
    let unseen = std::fs::read_to_string(&serve_log).unwrap().matches("sending it through another").count();
    eprintln!(
        "in flight at the proxies {load:?}; proxy {victim} killed; {complete} completed ({unseen} of them sent \
         again through another proxy), {after_tokens} ended after tokens"
    );
    assert!(unseen > 0, "no stream was caught before its first token: the test shows nothing");
    assert!(
        after_tokens <= load[victim] + 8,
        "{after_tokens} ended after tokens; the proxy had {} in flight",
        load[victim]
    );
    // Later requests go to the proxies left.
    for t in streams(&http, &runner, 20, 400, 0) {
        let Seen::Complete { cost } = t.await.unwrap().unwrap() else { panic!("a request after the kill failed") };
        told += cost;
    }

    // One channel opened within the budget; the proxy left without one never used.
    let with_channel: Vec<bool> = channels.iter().map(|c| c.exists()).collect();
    assert_eq!(with_channel.iter().filter(|&&c| c).count(), 2, "{with_channel:?}");
    let adds_up = |told: u64, victim: Option<usize>| {
        let mut vouched = 0;
        for (i, (pdir, _, _)) in proxies.iter().enumerate() {
            let ledger = ledger_json(pdir);
            let charged = ledger["totals"]["charged"].as_u64().unwrap();
            if i == 3 || !channels[i].exists() {
                assert_eq!(charged, 0, "proxy {i} has no channel or the wrong commission, and was used: {ledger}");
                continue;
            }
            let paid = paid_through(&channels[i]);
            vouched += paid;
            if Some(i) == victim {
                // What it charged and could not say before it died is not vouched.
                assert!(paid <= charged, "proxy {i}: vouched {paid}, charged {charged}");
            } else {
                assert_eq!(paid, charged, "proxy {i}: vouched {paid}, charged {charged}: {ledger}");
                let credited = ledger["accounts"][0]["deposited"].as_u64().unwrap();
                assert_eq!(credited, paid, "proxy {i} credited every voucher: {ledger}");
            }
        }
        assert_eq!(vouched, told, "the client vouched exactly what its apps were told they paid");
    };
    adds_up(told, Some(victim));

    // Restarted while that proxy is down, the runner pays the others through
    // the same channels and opens none (the budget was spent); once the proxy
    // is back it is verified, used, and paid through its channel again.
    drop(serve);
    let _serve = start_serve();
    for t in streams(&http, &runner, 10, 500, 0) {
        let Seen::Complete { cost } = t.await.unwrap().unwrap() else { panic!("a request after the restart failed") };
        told += cost;
    }
    let (vdir, vurl, _) = &proxies[victim];
    let vport: u16 = vurl.rsplit(':').next().unwrap().parse().unwrap();
    let charges_before = ledger_json(vdir)["totals"]["charges"].as_u64().unwrap();
    let _revived = registry_proxy(vdir, vport, &vdir.join("proxy.key"), &api, &registry, &[&a.url, &b.url]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&serve_log).unwrap().contains("proxy verified and used from now on") {
        assert!(std::time::Instant::now() < deadline, "the revived proxy was not taken up again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in streams(&http, &runner, 30, 600, 0) {
        let Seen::Complete { cost } = t.await.unwrap().unwrap() else { panic!("a request after the revival failed") };
        told += cost;
    }
    let served_again = ledger_json(vdir)["totals"]["charges"].as_u64().unwrap() - charges_before;
    eprintln!("the revived proxy served {served_again} of 30");
    assert!(served_again > 0, "the revived proxy got no traffic");
    let files = std::fs::read_dir(&opened)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(files, 2, "one channel file and spent.json");
    assert_eq!(channels.iter().filter(|c| c.exists()).count(), 2);
    adds_up(told, Some(victim));
    drop((a, b));
}
