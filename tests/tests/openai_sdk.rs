//! The official OpenAI Python SDK (pinned, from PyPI) against `cocoon serve`:
//! chat (whole and streamed), completions, models, error cases, with every
//! answer and every charge checked. Real processes on loopback: two test
//! workers, the proxy, and the `cocoon serve` binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use cocoon_protocol::{Commission, NanoTon, Prices};
use support::*;

const PRICES: Prices = Prices { prompt_per_1k: NanoTon(2_000_000), completion_per_1k: NanoTon(5_000_000) };

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The venv python with the pinned `openai` package (installed by `make test`).
fn sdk_python() -> String {
    let out = Command::new(repo_root().join("scripts/openai-sdk.sh")).output().expect("scripts/openai-sdk.sh runs");
    assert!(out.status.success(), "installing the openai SDK failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn worker(dir: &Path, name: &str) -> (Proc, Proc, String) {
    let config = priced_config(dir, name, (PRICES.prompt_per_1k.0, PRICES.completion_per_1k.0), 16);
    let sock = dir.join(format!("{name}.sock"));
    let enclave = start_enclave_with(&sock, 1, Some(&config));
    let (host, url) = start_host(&format!("unix:{}", sock.display()), &[]);
    (enclave, host, url)
}

#[test]
fn the_official_openai_sdk_works_unchanged_against_cocoon_serve() {
    let python = sdk_python();
    let dir = temp_dir("openai-sdk");
    let (_ea, _ha, a) = worker(&dir, "a");
    let (_eb, _hb, b) = worker(&dir, "b");
    let proxy_port = free_port();
    let proxy = Proc {
        child: Command::new(workspace_bin("cocoon-proxy"))
            .args(["serve", "--listen", &format!("127.0.0.1:{proxy_port}"), "--worker", &a, "--worker", &b])
            .arg("--ledger")
            .arg(dir.join("ledger.sqlite"))
            .arg("--account-key")
            .arg(dir.join("proxy.key"))
            .args(["--commission-ppm", "50000", "--insecure-simulated", "--platform", "simulated"])
            .env("COCOON_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_for_port(proxy_port, "the proxy");
    let key = dir.join("client.key");
    let out = Command::new(workspace_bin("cocoon")).arg("key").arg("--key").arg(&key).output().unwrap();
    assert!(out.status.success());
    let account = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = Command::new(workspace_bin("cocoon-proxy"))
        .args(["deposit", "--client", &account, "--amount", "1000000000"])
        .arg("--db")
        .arg(dir.join("ledger.sqlite"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The proxy admits its workers within a second or two; the runner verifies the proxy at start.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !get(&format!("http://127.0.0.1:{proxy_port}"), "/v1/workers").await.1.contains("\"up\"") {
            assert!(std::time::Instant::now() < deadline, "no worker admitted");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let serve_port = free_port();
    let _serve = Proc {
        child: Command::new(workspace_bin("cocoon"))
            .args(["serve", "--proxy", &format!("http://127.0.0.1:{proxy_port}")])
            .args(["--listen", &format!("127.0.0.1:{serve_port}"), "--insecure-simulated"])
            .arg("--key")
            .arg(&key)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_for_port(serve_port, "cocoon serve");

    let commission = Commission::from_ppm(50_000).unwrap();
    let cost = |words: u32| commission.charge(PRICES.cost(words, words)).0;
    let expected = json!({"alpha beta gamma": cost(3), "one two three four five": cost(5), "red green": cost(2)});
    let out = Command::new(&python)
        .arg(repo_root().join("tests/python/openai_sdk_check.py"))
        .arg(format!("http://127.0.0.1:{serve_port}/v1"))
        .arg(expected.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all checks passed"), "{stdout}");
    drop(proxy);
}
