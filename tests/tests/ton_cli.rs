//! `cocoon wallet` and `cocoon channel` as a payer and a payee run them,
//! against the local emulated chain (`contracts/chain/server.js`): open a
//! channel, sign a voucher, claim it, refuse a tampered one without sending
//! anything, close. Needs Node and `contracts/node_modules` (`make contracts-deps`).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use cocoon_ton::toncenter::Toncenter;
use serde_json::{Value, json};
use support::{key_file, start_local_chain, workspace_bin};

fn cocoon(api: &str, args: &[&str]) -> Output {
    Command::new(workspace_bin("cocoon")).args(args).env("COCOON_TON_API", api).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "cocoon failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_payer_and_a_payee_use_a_channel_from_the_cli() {
    let chain = start_local_chain();
    let api = chain.1.clone();
    let dir = std::env::temp_dir().join(format!("cocoon-ton-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let payer_key = key_file(&dir, "payer.key", 1);
    let payee_key = key_file(&dir, "payee.key", 2);
    let address = |key: &Path| -> String {
        let out = ok(cocoon(&api, &["wallet", "address", "--offline", "--key", key.to_str().unwrap()]));
        out.lines().find_map(|l| l.strip_prefix("raw: ")).unwrap().to_owned()
    };
    let (payer, payee) = (address(&payer_key), address(&payee_key));
    let client = Toncenter::new(&api, None).unwrap();
    for a in [&payer, &payee] {
        client.local("airdrop", json!({ "address": a, "amount": "20000000000" })).await.unwrap();
    }
    assert!(
        ok(cocoon(&api, &["wallet", "address", "--key", payer_key.to_str().unwrap()]))
            .contains("balance: 20.000000000 TON")
    );

    let channel = dir.join("channel.json");
    let opened = ok(cocoon(
        &api,
        &[
            "channel",
            "open",
            "--key",
            payer_key.to_str().unwrap(),
            "--payee",
            &payee,
            "--amount",
            "5",
            "--dispute-window",
            "60",
            "--out",
            channel.to_str().unwrap(),
        ],
    ));
    let state: Value = serde_json::from_str(&opened).unwrap();
    assert_eq!(state["deposited"], json!(5_000_000_000u64));

    let voucher = dir.join("voucher.json");
    std::fs::write(
        &voucher,
        ok(cocoon(
            &api,
            &[
                "channel",
                "voucher",
                channel.to_str().unwrap(),
                "--total",
                "1500000000",
                "--key",
                payer_key.to_str().unwrap(),
            ],
        )),
    )
    .unwrap();
    // Only the payer's key signs this channel's vouchers.
    let wrong = cocoon(
        &api,
        &["channel", "voucher", channel.to_str().unwrap(), "--total", "1", "--key", payee_key.to_str().unwrap()],
    );
    assert!(!wrong.status.success());

    // A tampered voucher (total raised) is refused before anything is sent.
    let mut tampered: Value = serde_json::from_slice(&std::fs::read(&voucher).unwrap()).unwrap();
    tampered["total"] = json!(4_000_000_000u64);
    let tampered_file = dir.join("tampered.json");
    std::fs::write(&tampered_file, tampered.to_string()).unwrap();
    let fees = |v: Value| v["fees"].as_str().unwrap().to_owned();
    let fees_before = fees(client.local("fees", json!({})).await.unwrap());
    let refused = cocoon(
        &api,
        &[
            "channel",
            "claim",
            channel.to_str().unwrap(),
            tampered_file.to_str().unwrap(),
            "--key",
            payee_key.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nothing was sent"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(fees(client.local("fees", json!({})).await.unwrap()), fees_before);

    let claimed = ok(cocoon(
        &api,
        &[
            "channel",
            "claim",
            channel.to_str().unwrap(),
            voucher.to_str().unwrap(),
            "--key",
            payee_key.to_str().unwrap(),
        ],
    ));
    assert!(claimed.contains("claimed 1.500000000 TON"), "{claimed}");
    let status: Value =
        serde_json::from_str(&ok(cocoon(&api, &["channel", "status", channel.to_str().unwrap()]))).unwrap();
    assert_eq!(status["claimed"], json!(1_500_000_000u64));

    ok(cocoon(&api, &["channel", "close", channel.to_str().unwrap(), "--key", payer_key.to_str().unwrap()]));
    let early = cocoon(&api, &["channel", "finalize", channel.to_str().unwrap(), "--key", payer_key.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("dispute window has not passed"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    client.local("advance", json!({ "seconds": 61 })).await.unwrap();
    let fin =
        ok(cocoon(&api, &["channel", "finalize", channel.to_str().unwrap(), "--key", payer_key.to_str().unwrap()]));
    assert!(fin.contains("1.500000000 TON claimed"), "{fin}");

    // A channel file whose parameters do not give its address is refused.
    let mut file: Value = serde_json::from_slice(&std::fs::read(&channel).unwrap()).unwrap();
    file["channel_id"] = json!(2);
    std::fs::write(&channel, file.to_string()).unwrap();
    let bad = cocoon(&api, &["channel", "status", channel.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("what its parameters give"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_operator_governs_the_registry_from_the_cli() {
    let chain = start_local_chain();
    let api = chain.1.clone();
    let dir = std::env::temp_dir().join(format!("cocoon-ton-registry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let owner_key = key_file(&dir, "owner.key", 21);
    let key = owner_key.to_str().unwrap();
    let out = ok(cocoon(&api, &["wallet", "address", "--offline", "--key", key]));
    let owner = out.lines().find_map(|l| l.strip_prefix("raw: ")).unwrap().to_owned();
    let client = Toncenter::new(&api, None).unwrap();
    client.local("airdrop", json!({ "address": owner, "amount": "5000000000" })).await.unwrap();

    // Nothing deployed yet: a reader is told so.
    let none = cocoon(&api, &["registry", "show", "--owner", &owner]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no registry"), "{}", String::from_utf8_lossy(&none.stderr));

    // The first change deploys it; each change is seen on chain before the command returns.
    let model = "ab".repeat(32);
    assert!(ok(cocoon(&api, &["registry", "add-model", &model, "--key", key])).contains(&format!("sha256:{model}")));
    let reference = dir.join("reference.json");
    let document =
        json!({"tdx": {"mrtd": "00".repeat(48), "rtmr1": "11".repeat(48)}, "note": "x".repeat(300)}).to_string();
    std::fs::write(&reference, &document).unwrap();
    ok(cocoon(&api, &["registry", "add-image", reference.to_str().unwrap(), "--key", key]));
    let account = "cd".repeat(32);
    ok(cocoon(
        &api,
        &[
            "registry",
            "add-proxy",
            "--account",
            &account,
            "--commission-ppm",
            "100000",
            "--endpoint",
            "https://proxy.example:8090",
            "--key",
            key,
        ],
    ));
    let shown: Value =
        serde_json::from_str(&ok(cocoon(&api, &["registry", "show", "--owner", &owner, "--json"]))).unwrap();
    assert_eq!(shown["owner"], json!(owner));
    assert_eq!(shown["models"], json!([model]));
    let digest = hex::encode(sha2_digest(document.as_bytes()));
    assert_eq!(shown["images"][&digest], serde_json::from_str::<Value>(&document).unwrap());
    let proxy = &shown["proxies"][&account];
    assert_eq!(proxy["commission_ppm"], json!(100000));
    assert_eq!(proxy["endpoint"], json!("https://proxy.example:8090"));
    let key_bytes: [u8; 32] = hex::decode(&account).unwrap().try_into().unwrap();
    assert_eq!(proxy["wallet"], json!(cocoon_ton::wallet::address_of(&key_bytes).unwrap().to_hex()));

    // Removals, and input refused before anything is sent.
    ok(cocoon(&api, &["registry", "remove-model", &model, "--key", key]));
    ok(cocoon(&api, &["registry", "remove-image", &digest, "--key", key]));
    let shown: Value =
        serde_json::from_str(&ok(cocoon(&api, &["registry", "show", "--owner", &owner, "--json"]))).unwrap();
    assert_eq!(shown["models"], json!([]));
    assert_eq!(shown["images"], json!({}));
    let not_json = dir.join("not.json");
    std::fs::write(&not_json, "MRTD=00").unwrap();
    let fees = client.local("fees", json!({})).await.unwrap();
    assert!(!cocoon(&api, &["registry", "add-image", not_json.to_str().unwrap(), "--key", key]).status.success());
    assert!(!cocoon(&api, &["registry", "add-model", "abc", "--key", key]).status.success());
    assert!(
        !cocoon(
            &api,
            &[
                "registry",
                "add-proxy",
                "--account",
                &account,
                "--commission-ppm",
                "1",
                "--endpoint",
                "ftp://x",
                "--key",
                key
            ]
        )
        .status
        .success()
    );
    assert_eq!(client.local("fees", json!({})).await.unwrap(), fees, "refused input sent nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
