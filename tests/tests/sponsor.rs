//! The app pays without seeing content: `cocoon sponsor` (the app's server,
//! holding the app's account key) signs the charge authorisation of a sealed
//! request from its hash alone, for a Telegram user whose init data the bot's
//! token signed, within that user's quota; the sealed request then goes
//! through the proxy, which charges the app's account. Real processes on
//! loopback: a test worker, `cocoon-proxy`, `cocoon sponsor`; the test plays
//! the Mini App's browser with the client library.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use cocoon_client::chat::SseParser;
use cocoon_client::http::HttpClient;
use cocoon_client::sponsor::Sponsored;
use cocoon_protocol::authorization::ClientAuthorization;
use cocoon_protocol::bhttp_msg::{InnerRequest, ResponseEvent};
use cocoon_tests::echo_engine::{MODEL_ID, answer_tokens};
use support::net::*;
use support::*;

const BOT_TOKEN: &str = "7000001:AAH-test_token";

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Init data for Telegram user `user`, issued `age` seconds ago, signed with `token`.
fn init_data(user: i64, age: u64, token: &str) -> String {
    let fields: BTreeMap<String, String> = [
        ("user".to_string(), json!({"id": user, "first_name": "Test"}).to_string()),
        ("auth_date".to_string(), (unix_now() - age).to_string()),
        ("query_id".to_string(), format!("q{user}")),
    ]
    .into();
    cocoon_client::telegram::sign(&fields, token)
}

fn start_sponsor(dir: &std::path::Path, port: u16) -> Proc {
    let child = Command::new(workspace_bin("cocoon"))
        .arg("sponsor")
        .arg("--key")
        .arg(dir.join("app.key"))
        .arg("--bot-token-file")
        .arg(dir.join("bot.token"))
        .arg("--db")
        .arg(dir.join("sponsor.sqlite"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--quota", "0.01", "--max-cost", "0.004"])
        .args(["--max-age", "3600", "--model", MODEL_ID])
        .env("COCOON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "cocoon sponsor");
    Proc { child }
}

/// Asks the sponsor to sign `hash`: its status and JSON answer.
async fn ask_sponsor(sponsor: &str, init_data: &str, hash: &[u8; 32], max_cost: u64) -> (u16, Value) {
    let body =
        json!({"init_data": init_data, "request_hash": hex::encode(hash), "model": MODEL_ID, "max_cost": max_cost});
    let (status, bytes) = post_json(&HttpClient::default(), sponsor, "/v1/sponsor", &body).await;
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The browser's side: seals `prompt` to the worker the proxy routes to, has
/// the sponsor sign it for `user`, sends it through the proxy and reads the
/// answer. The text and the charge the proxy reports, or the sponsor's refusal.
async fn sponsored_chat(
    proxy: &str,
    sponsor: &str,
    user_init_data: &str,
    prompt: &str,
    max_cost: u64,
) -> Result<(String, u64), (u16, String)> {
    let worker = routed_worker(proxy, &[]).await;
    let body = json!({"model": MODEL_ID, "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": prompt}]});
    let sealed =
        worker.seal_stream(&InnerRequest::post_json("/v1/chat/completions", body.to_string().into_bytes())).unwrap();
    let (status, answer) = ask_sponsor(sponsor, user_init_data, &sealed.request_hash(), max_cost).await;
    if status != 200 {
        return Err((status, answer["error"]["code"].as_str().unwrap_or("").to_string()));
    }
    let sponsored: Sponsored = serde_json::from_value(answer).unwrap();
    let auth = ClientAuthorization::from_headers(|h| sponsored.headers.get(h).map(String::as_str)).unwrap();
    let mut stream = worker.send_sealed(sealed, &auth.header_values()).await.unwrap();
    let (mut text, mut parser) = (String::new(), SseParser::default());
    while let Some(event) = stream.next_event().await.unwrap() {
        if let ResponseEvent::Content(c) = event {
            for data in parser.push(&c).unwrap() {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            }
        }
    }
    assert!(stream.receipt().unwrap().is_some(), "the answer came with its receipt");
    let charge = stream.trailer(cocoon_protocol::media::CHARGE_HEADER).unwrap().parse().unwrap();
    Ok((text, charge))
}

/// Users of a Mini App are served on the app's account, each within its
/// quota; forged, stale and replayed authorisation requests and spent quotas
/// are refused, each with its own code, and the quotas survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pays_for_its_users_sealed_requests_within_their_quotas_without_seeing_them() {
    let dir = temp_dir("sponsor");
    let worker = TestWorker::start(&dir, "a", 0);
    let (_proxy, proxy) = dev_proxy(&dir, &[&worker.url]);
    wait_admitted(&proxy, 1).await;
    key_file(&dir, "app.key", 91);
    let app = SigningKey::from_bytes(&[91; 32]);
    deposit(&dir, &app, 1_000_000_000);
    key_file(&dir, "bot.token", 0);
    std::fs::write(dir.join("bot.token"), BOT_TOKEN).unwrap();
    let port = free_port();
    let sponsor_proc = start_sponsor(&dir, port);
    let sponsor = format!("http://127.0.0.1:{port}");

    // Two users, served on the app's account: 0.004 TON authorised each time,
    // 0.01 TON per user and day, so two requests each and not a third.
    let (alice, bob) = (init_data(1001, 5, BOT_TOKEN), init_data(1002, 5, BOT_TOKEN));
    let mut charged = 0;
    for (user, prompt) in [(&alice, "what is the sealed answer"), (&bob, "bob asks too"), (&alice, "again please")] {
        let (text, charge) = sponsored_chat(&proxy, &sponsor, user, prompt, 4_000_000).await.unwrap();
        assert_eq!(text, answer_tokens(prompt).concat());
        charged += charge;
    }
    let ledger = ledger_json(&dir);
    let accounts = ledger["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "only the app has an account: {ledger}");
    assert_eq!(accounts[0]["client_key"], hex::encode(app.verifying_key().to_bytes()));
    assert_eq!(accounts[0]["charged"].as_u64().unwrap(), charged);
    assert_eq!(ledger["totals"]["charges"], 3);

    // Alice's third request would pass her quota.
    let refused = sponsored_chat(&proxy, &sponsor, &alice, "a third one", 4_000_000).await.unwrap_err();
    assert_eq!(refused, (429, "quota_exhausted".into()));
    // Init data signed with another bot's token, or a user id changed after signing.
    let forged = init_data(1003, 5, "7000002:another-bot");
    assert_eq!(
        sponsored_chat(&proxy, &sponsor, &forged, "hi", 1000).await.unwrap_err(),
        (401, "init_data_invalid".into())
    );
    let changed = bob.replace("1002", "1004");
    assert_eq!(
        sponsored_chat(&proxy, &sponsor, &changed, "hi", 1000).await.unwrap_err(),
        (401, "init_data_invalid".into())
    );
    // Issued two hours ago: older than the sponsor accepts.
    let stale = init_data(1002, 7200, BOT_TOKEN);
    assert_eq!(
        sponsored_chat(&proxy, &sponsor, &stale, "hi", 1000).await.unwrap_err(),
        (401, "init_data_expired".into())
    );
    // The same sealed request signed twice: the second is refused.
    let hash = [7u8; 32];
    assert_eq!(ask_sponsor(&sponsor, &bob, &hash, 1000).await.0, 200);
    let (status, twice) = ask_sponsor(&sponsor, &bob, &hash, 1000).await;
    assert_eq!((status, twice["error"]["code"].as_str()), (409, Some("already_signed")), "{twice}");
    // Above the per-request maximum.
    assert_eq!(ask_sponsor(&sponsor, &bob, &[8; 32], 4_000_001).await.0, 400);

    // Restarted, the sponsor still knows what was spent and signed.
    drop(sponsor_proc);
    let _sponsor = start_sponsor(&dir, port);
    let refused = sponsored_chat(&proxy, &sponsor, &alice, "after the restart", 4_000_000).await.unwrap_err();
    assert_eq!(refused, (429, "quota_exhausted".into()));
    assert_eq!(ask_sponsor(&sponsor, &bob, &hash, 1000).await.0, 409);
    let (text, _) =
        sponsored_chat(&proxy, &sponsor, &init_data(1005, 5, BOT_TOKEN), "a new user", 4_000_000).await.unwrap();
    assert_eq!(text, answer_tokens("a new user").concat());
    // The sponsor's book holds hashes, users and amounts: no prompt, no answer.
    let book = std::fs::read(dir.join("sponsor.sqlite")).unwrap();
    assert!(find(&book, b"sealed answer").is_none() && find(&book, b"ANSWER").is_none());
    drop(worker);
}
