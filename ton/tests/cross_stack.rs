//! Rust and the contracts agree: the cells built here hash as @ton/core builds
//! them, the contracts on @ton/sandbox accept what Rust built (and refuse a
//! replay and a forged signature), and Rust reads the contracts' get-method
//! stacks. Needs Node and `contracts/node_modules` (`make contracts-deps`).

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use cocoon_ton::channel::{self, ChannelBinding, ChannelParams, ChannelState};
use cocoon_ton::registry::{self, ProxyEntry};
use cocoon_ton::stack::{StackEntry, from_toncenter};
use cocoon_ton::{Cell, TonAddress, Voucher, to_boc};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TON: u64 = 1_000_000_000;

fn b64(cell: &Cell) -> String {
    base64::engine::general_purpose::STANDARD.encode(to_boc(cell).unwrap())
}

fn addr(byte: u8) -> TonAddress {
    TonAddress::from_hex_str(&format!("0:{}", hex::encode([byte; 32]))).unwrap()
}

fn contracts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts")
}

fn run_node(input: &Value) -> Value {
    run_node_with(input, &[])
}

fn run_node_with(input: &Value, args: &[&str]) -> Value {
    let dir = contracts_dir();
    assert!(
        dir.join("node_modules/@ton/sandbox").is_dir(),
        "contracts/node_modules is missing: run `make contracts-deps` (npm ci in contracts/)"
    );
    let file = std::env::temp_dir().join(format!("cocoon-cross-stack-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(input).unwrap()).unwrap();
    let out = Command::new("node")
        .arg("scripts/cross_stack.js")
        .arg(&file)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("node runs (install Node.js: scripts/setup.sh)");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "cross_stack.js failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cross_stack.js prints JSON")
}

#[test]
fn rust_cells_match_ton_core_and_the_contracts_accept_them() {
    let payer_key = SigningKey::from_bytes(&[7u8; 32]);
    let params = ChannelParams {
        payer: addr(0x11),
        payee: addr(0x22),
        payer_key: payer_key.verifying_key().to_bytes(),
        channel_id: 0x0123_4567_89ab_cdef,
        dispute_window: 86_400,
    };
    let channel = params.address().unwrap();
    let channel_input = json!({
        "params": {
            "payer": params.payer.to_hex(),
            "payee": params.payee.to_hex(),
            "payerKey": hex::encode(params.payer_key),
            "channelId": params.channel_id.to_string(),
            "disputeWindow": params.dispute_window,
        },
        "stateInit": b64(&params.state_init().unwrap()),
        "topUp": b64(&channel::top_up_body(0).unwrap()),
    });
    // The instance exists once the channel is deployed: the emulator tells it first.
    let probed = run_node_with(&json!({ "channel": channel_input }), &["--probe"]);
    let binding = ChannelBinding {
        global_id: probed["globalId"].as_i64().unwrap() as i32,
        instance: probed["instance"].as_str().unwrap().parse().unwrap(),
    };
    assert_eq!(binding.global_id, -239, "the emulator runs mainnet's configuration");
    let totals = [TON, TON * 5 / 2, 3 * TON + 1];
    let vouchers: Vec<Value> = totals
        .iter()
        .enumerate()
        .map(|(i, &total)| {
            let voucher = Voucher { channel: channel.clone(), binding, total };
            let signed = voucher.sign(&payer_key).unwrap();
            // What the payee checks before accepting a voucher.
            assert_eq!(signed.verify(&channel, &binding, &params.payer_key).unwrap(), voucher);
            json!({
                "total": total.to_string(),
                "queryId": i.to_string(),
                "signature": signed.signature,
                "voucher": b64(&voucher.to_cell().unwrap()),
                "claim": b64(&signed.claim_body(i as u64).unwrap()),
            })
        })
        .collect();
    let forged = Voucher { channel: channel.clone(), binding, total: 4 * TON }
        .sign(&SigningKey::from_bytes(&[8u8; 32]))
        .unwrap();
    // Good signatures, for testnet's copy of this channel and for an earlier instance of it.
    let elsewhere = |binding: ChannelBinding| {
        Voucher { channel: channel.clone(), binding, total: 4 * TON }.sign(&payer_key).unwrap().claim_body(10).unwrap()
    };
    let other_network = elsewhere(ChannelBinding { global_id: -3, ..binding });
    let other_instance = elsewhere(ChannelBinding { instance: binding.instance - 1, ..binding });

    let document = br#"{"tdx":{"mrtd":"00"},"note":"a reference-values document longer than one cell, so that it snakes over several cells of 127 bytes each"}"#;
    let owner = addr(0x33);
    let model: [u8; 32] = Sha256::digest(b"model").into();
    let proxy_key = [0x44u8; 32];
    let proxy =
        ProxyEntry { wallet: addr(0x55), commission_ppm: 100_000, endpoint: "https://proxy.example:8443/v1".into() };

    let mut full_channel = channel_input.clone();
    full_channel.as_object_mut().unwrap().extend(
        json!({
            "address": channel.to_hex(),
            "data": b64(&params.initial_data().unwrap()),
            "requestClose": b64(&channel::request_close_body(0).unwrap()),
            "finalize": b64(&channel::finalize_body(0).unwrap()),
            "binding": { "globalId": binding.global_id, "instance": binding.instance.to_string() },
            "vouchers": vouchers,
            "forgedClaim": b64(&forged.claim_body(9).unwrap()),
            "otherNetworkClaim": b64(&other_network),
            "otherInstanceClaim": b64(&other_instance),
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    let input = json!({
        "channel": full_channel,
        "registry": {
            "owner": owner.to_hex(),
            "data": b64(&registry::initial_data(&owner).unwrap()),
            "stateInit": b64(&registry::state_init(&owner).unwrap()),
            "document": base64::engine::general_purpose::STANDARD.encode(document),
            "model": hex::encode(model),
            "proxyKey": hex::encode(proxy_key),
            "proxy": { "wallet": proxy.wallet.to_hex(), "commissionPpm": proxy.commission_ppm, "endpoint": proxy.endpoint },
            "bodies": {
                "addImage": b64(&registry::add_image_body(document, 1).unwrap()),
                "addModel": b64(&registry::add_model_body(&model, 2).unwrap()),
                "addProxy": b64(&registry::add_proxy_body(&proxy_key, &proxy, 3).unwrap()),
            },
        },
    });
    let out = run_node(&input);

    // Rust -> @ton/core: every cell hashes the same.
    assert_eq!(out["mismatches"], json!([]), "cells differ between Rust and @ton/core");
    assert_eq!(out["channelAddress"], json!(channel.to_hex()));
    assert_eq!(out["registryAddress"], json!(registry::address(&owner).unwrap().to_hex()));

    // @ton/core -> Rust: the cells @ton/core built parse and hash as Rust's.
    for (v, &total) in out["js"]["vouchers"].as_array().unwrap().iter().zip(&totals) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(v["voucher"].as_str().unwrap()).unwrap();
        let cell = cocoon_ton::parse_boc(&bytes, 4096).unwrap();
        let ours = Voucher { channel: channel.clone(), binding, total }.to_cell().unwrap();
        assert_eq!(cell.cell_hash(), ours.cell_hash());
    }

    // The contracts ran Rust's messages: every claim paid, the replay and the forgery were refused.
    let codes: Vec<(String, i64)> = out["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["what"].as_str().unwrap().to_owned(), o["exitCode"].as_i64().unwrap()))
        .collect();
    let expect = |what: &str, code: i64| {
        let found = codes.iter().find(|(w, _)| w == what).unwrap_or_else(|| panic!("no outcome {what}: {codes:?}"));
        assert_eq!(found.1, code, "{what}: {codes:?}");
    };
    expect("deploy + top-up", 0);
    for total in totals {
        expect(&format!("claim {total}"), 0);
    }
    expect("replayed claim", 405);
    expect("claim signed by another key", 404);
    expect("claim for another network", 412);
    expect("claim for an earlier instance", 413);
    expect("registry deploy + add image", 0);
    expect("registry add model", 0);
    expect("registry add proxy", 0);

    // Rust reads the channel's state as the get-method returned it.
    let stack = from_toncenter(&out["channelState"]).unwrap();
    let state = ChannelState::from_stack(&stack).unwrap();
    state.check_params(&params).unwrap();
    assert_eq!(state.deposited, 10 * TON - cocoon_ton::TOPUP_FEE);
    assert_eq!(state.claimed, *totals.last().unwrap());
    assert!(!state.closed);
    assert_eq!(state.binding(), binding);
    assert_eq!(state.claimable(state.claimed), Err("the voucher is not newer than the last claim"));
    assert_eq!(state.claimable(state.deposited + 1), Err("the voucher exceeds the channel's deposit"));

    // ... and the registry's lists.
    let cell = |m: &'static str| match &from_toncenter(&out["registry"][m]).unwrap()[..] {
        [entry] => entry.cell_opt(m).unwrap(),
        other => panic!("{m}: {other:?}"),
    };
    let images = registry::images_from(cell("get_images").as_ref()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images.values().next().unwrap(), document);
    assert_eq!(registry::models_from(cell("get_models").as_ref()).unwrap(), vec![model]);
    let proxies = registry::proxies_from(cell("get_proxies").as_ref()).unwrap();
    assert_eq!(proxies.get(&proxy_key), Some(&proxy));
    let owner_stack = from_toncenter(&out["registry"]["get_owner"]).unwrap();
    assert!(matches!(&owner_stack[..], [StackEntry::Slice(_)]));
    assert_eq!(owner_stack[0].address("owner").unwrap(), owner);
}
