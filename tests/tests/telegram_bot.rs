//! The bot example (examples/telegram-bot/bot.py, python-telegram-bot and the
//! official openai SDK, pinned from PyPI) answering a Telegram message through
//! `cocoon serve`, the proxy and a worker. Telegram is a fake Bot API server on
//! loopback that delivers one message and records the bot's reply.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::any;
use serde_json::{Value, json};

use cocoon_tests::echo_engine::{MODEL_ID, answer_tokens};
use support::net::*;
use support::*;

const TOKEN: &str = "7000003:bot-example-token";
const QUESTION: &str = "what does the enclave say";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// What the fake Bot API saw: the replies sent, and the methods called.
#[derive(Default)]
struct FakeTelegram {
    sent: Vec<Value>,
    calls: Vec<String>,
}

fn ok(result: Value) -> axum::Json<Value> {
    axum::Json(json!({"ok": true, "result": result}))
}

/// One Bot API method call: `getUpdates` delivers the question once, then
/// nothing; `sendMessage` is recorded; the rest succeed.
async fn bot_api(
    State(seen): State<Arc<Mutex<FakeTelegram>>>,
    UrlPath((bot, method)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if bot != format!("bot{TOKEN}") {
        return (
            http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
        )
            .into_response();
    }
    // python-telegram-bot posts JSON or a form, depending on the call.
    let params: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        let form: serde_json::Map<String, Value> = url_form(&body);
        Value::Object(form)
    });
    seen.lock().unwrap().calls.push(method.clone());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let chat = json!({"id": 555, "type": "private", "first_name": "Ann"});
    match method.as_str() {
        "getMe" => ok(json!({"id": 7000003, "is_bot": true, "first_name": "cocoon", "username": "cocoon_test_bot",
                             "can_join_groups": false, "can_read_all_group_messages": false,
                             "supports_inline_queries": false}))
        .into_response(),
        "getUpdates" => {
            let offset = params["offset"].as_i64().or_else(|| params["offset"].as_str().and_then(|s| s.parse().ok()));
            if offset.unwrap_or(0) <= 1 {
                return ok(json!([{"update_id": 1, "message": {"message_id": 10, "date": now, "chat": chat,
                    "from": {"id": 555, "is_bot": false, "first_name": "Ann"}, "text": QUESTION}}]))
                .into_response();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            ok(json!([])).into_response()
        }
        "sendMessage" => {
            seen.lock().unwrap().sent.push(params.clone());
            ok(json!({"message_id": 11, "date": now, "chat": chat, "text": params["text"]})).into_response()
        }
        _ => ok(json!(true)).into_response(),
    }
}

fn url_form(body: &[u8]) -> serde_json::Map<String, Value> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = urlencoding::decode(&v.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_default();
            (k.to_string(), Value::String(v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_example_answers_a_telegram_message_through_cocoon_serve() {
    let out = Command::new(repo_root().join("scripts/openai-sdk.sh")).output().expect("scripts/openai-sdk.sh runs");
    assert!(out.status.success(), "installing the Python packages failed: {}", String::from_utf8_lossy(&out.stderr));
    let python = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let dir = temp_dir("telegram-bot");
    let worker = TestWorker::start(&dir, "a", 0);
    let (_proxy, proxy) = dev_proxy(&dir, &[&worker.url]);
    let (runner, _) = funded_runner(&dir, &proxy, 1, 92, 1_000_000_000).await;

    let seen = Arc::new(Mutex::new(FakeTelegram::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let telegram = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/{bot}/{method}", any(bot_api)).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let log = dir.join("bot.log");
    let _bot = Proc {
        child: Command::new(&python)
            .arg(repo_root().join("examples/telegram-bot/bot.py"))
            .env("TELEGRAM_BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API", &telegram)
            .env("COCOON_API", format!("{runner}/v1"))
            .env("COCOON_MODEL", MODEL_ID)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        if let Some(r) = seen.lock().unwrap().sent.first().cloned() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the bot sent no reply; it called {:?}; its log: {}",
            seen.lock().unwrap().calls,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = reply["text"].as_str().unwrap();
    assert!(text.starts_with(&answer_tokens(QUESTION).concat()), "{reply}");
    assert!(text.contains("nanoTON"), "the reply names the verified cost: {reply}");
    assert_eq!(reply["chat_id"].to_string().trim_matches('"'), "555", "{reply}");
    let ledger = ledger_json(&dir);
    assert_eq!(ledger["totals"]["charges"], 1, "one message, one charge: {ledger}");
    assert!(
        text.contains(&format!("{} nanoTON", ledger["totals"]["charged"])),
        "the cost the bot shows is the charge: {reply}"
    );
}
