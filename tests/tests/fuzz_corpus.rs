//! Every fuzz target's body run on its seeds, on whatever corpus `make fuzz`
//! has grown locally, and on deterministic mutations of the seeds: the
//! fuzzers' smoke test inside `make test`, without a nightly toolchain.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_bodies;

use cocoon_protocol::bhttp_msg::{InnerRequest, InnerResponse, StreamingResponseEncoder};
use cocoon_protocol::ohttp::ClientRequest;
use cocoon_protocol::{Receipt, ReceiptSigner};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<dir>/<target>` (none when the folder is missing).
fn files(dir: &str, target: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else { return Vec::new() };
    entries.flatten().map(|e| std::fs::read(e.path()).unwrap()).collect()
}

/// Each seed, then truncations and single-byte changes of it (a few hundred
/// per seed); then, once each, the inputs of a corpus `make fuzz` grew here
/// (the fuzzer has explored their neighbourhood already).
fn replay(target: &str, body: impl Fn(&[u8])) {
    let seeds = files("seeds", target);
    assert!(!seeds.is_empty(), "no seeds for the {target} fuzz target in fuzz/seeds/{target}");
    let mut runs = 0;
    for input in seeds {
        body(&input);
        let step = (input.len() / 64).max(1);
        for cut in (0..input.len()).step_by(step) {
            body(&input[..cut]);
            let mut flipped = input.clone();
            flipped[cut] ^= 0x5a;
            body(&flipped);
            runs += 2;
        }
    }
    for input in files("corpus", target) {
        body(&input);
    }
    assert!(runs > 0, "{target}: nothing replayed");
}

#[test]
fn ct2_model_files() {
    replay("ct2", fuzz_bodies::ct2);
}

#[test]
fn audio_files() {
    replay("audio", fuzz_bodies::audio);
}

#[test]
fn ohttp_inputs() {
    replay("ohttp", fuzz_bodies::ohttp);
}

#[test]
fn bhttp_inputs() {
    replay("bhttp", fuzz_bodies::bhttp);
}

#[test]
fn receipt_inputs() {
    replay("receipt", fuzz_bodies::receipt);
}

#[test]
fn spdm_inputs() {
    replay("spdm", fuzz_bodies::spdm);
}

#[test]
fn rim_inputs() {
    replay("rim", fuzz_bodies::rim);
}

#[test]
fn ton_inputs() {
    replay("ton", fuzz_bodies::ton);
}

#[test]
fn inner_api_inputs() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    replay("inner_api", |data| {
        for req in fuzz_bodies::inner_requests(data) {
            let reply = rt.block_on(cocoon_enclave::api::handle(None, Some(fuzz_bodies::PRICES), req, None));
            assert!((400..600).contains(&reply.status), "no model is loaded, yet the API answered {}", reply.status);
        }
    });
}

/// Writes the TON target's seeds (run with `--ignored` when those formats change).
#[test]
#[ignore]
fn write_ton_seeds() {
    use cocoon_ton::channel::{ChannelDescriptor, ChannelParams};
    use cocoon_ton::registry::ProxyEntry;
    use cocoon_ton::{TonAddress, Voucher, to_boc};
    let dir = fuzz_dir().join("seeds/ton");
    std::fs::create_dir_all(&dir).unwrap();
    let addr = |b: u8| TonAddress::from_hex_str(&format!("0:{}", hex::encode([b; 32]))).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let params = ChannelParams {
        payer: addr(1),
        payee: addr(2),
        payer_key: key.verifying_key().to_bytes(),
        channel_id: 3,
        dispute_window: 3600,
    };
    let binding = cocoon_ton::channel::ChannelBinding { global_id: -239, instance: 7_000_000 };
    let signed = Voucher { channel: params.address().unwrap(), binding, total: 123_456 }.sign(&key).unwrap();
    std::fs::write(dir.join("claim.boc"), to_boc(&signed.claim_body(9).unwrap()).unwrap()).unwrap();
    let entry = ProxyEntry { wallet: addr(4), commission_ppm: 100_000, endpoint: "https://proxy.example:8090".into() };
    std::fs::write(dir.join("proxy_entry.boc"), to_boc(&entry.to_cell().unwrap()).unwrap()).unwrap();
    std::fs::write(dir.join("voucher.json"), serde_json::to_vec(&signed).unwrap()).unwrap();
    let descriptor = ChannelDescriptor::bound(&params, binding).unwrap();
    std::fs::write(dir.join("channel.json"), serde_json::to_vec(&descriptor).unwrap()).unwrap();
    // get_channel_state as toncenter renders it (addresses as slices).
    let slice = |a: &TonAddress| {
        let mut b = cocoon_ton::CellBuilder::new();
        b.store_address(a).unwrap();
        let boc = to_boc(&b.build().unwrap()).unwrap();
        serde_json::json!(["slice", {"bytes": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, boc)}])
    };
    let num = |v: u64| serde_json::json!(["num", format!("0x{v:x}")]);
    let stack = serde_json::json!([
        slice(&params.payer),
        slice(&params.payee),
        ["num", format!("0x{}", hex::encode(params.payer_key))],
        num(3),
        num(3600),
        num(5_000_000_000),
        num(123_456),
        num(0),
        num(0),
        num(5_009_000_000u64),
        num(7_000_000),
        ["num", "-0xef"],
    ]);
    std::fs::write(dir.join("channel_state.json"), stack.to_string()).unwrap();
    // Registry lists as get_images / get_proxies return them: dictionaries of references.
    let refs: std::collections::HashMap<num_bigint::BigUint, std::sync::Arc<cocoon_ton::Cell>> = (1..=3u8)
        .map(|i| {
            let doc = cocoon_ton::snake::encode(format!("{{\"image\":{i}}}").as_bytes()).unwrap();
            (num_bigint::BigUint::from_bytes_be(&[i; 32]), std::sync::Arc::new(doc))
        })
        .collect();
    let mut b = cocoon_ton::CellBuilder::new();
    b.store_dict_data(256, tonlib_core::cell::dict::predefined_writers::val_writer_ref_cell, refs).unwrap();
    std::fs::write(dir.join("dictionary.boc"), to_boc(&b.build().unwrap()).unwrap()).unwrap();
}

/// Writes the seed files (run once with `--ignored` when the formats change).
#[test]
#[ignore]
fn write_seeds() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let chat = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true,"stop":["x"],"temperature":0.5}"#;
    let mut inner = InnerRequest::post_json("/v1/chat/completions", chat.to_vec());
    inner.stamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000));
    let config = fuzz_bodies::gateway().config();
    let (whole, _) = ClientRequest::new(config).unwrap().seal(&inner.encode()).unwrap();
    let (chunked, _) = ClientRequest::new(config).unwrap().seal_chunked(&inner.encode()).unwrap();
    write("ohttp", "request", &whole);
    write("ohttp", "chunked_request", &chunked);
    write("bhttp", "request", &inner.encode());
    let resp = InnerResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: b"{}".to_vec(),
    };
    write("bhttp", "response", &resp.encode());
    let mut streamed = StreamingResponseEncoder::head(200, &[("content-type", "text/event-stream")]);
    streamed.extend(StreamingResponseEncoder::content(b"data: {}\n\n"));
    streamed.extend(StreamingResponseEncoder::end());
    write("bhttp", "streamed_response", &streamed);
    let signer = ReceiptSigner::generate();
    let receipt = Receipt {
        request_hash: serde_bytes::ByteBuf::from(vec![1; 32]),
        model_id: "m".into(),
        model_digest: Some(serde_bytes::ByteBuf::from(vec![2; 32])),
        prompt_tokens: 10,
        completion_tokens: 20,
        cost_cap: Some(cocoon_protocol::NanoTon(1_000)),
        issued_at: 1_800_000_000,
    };
    write("receipt", "key_and_receipt", &[signer.public_key().as_slice(), &signer.sign(&receipt)].concat());
    write("inner_api", "chat", chat);
    write("inner_api", "text", br#"{"model":"m","prompt":"a b c","max_tokens":2,"top_p":0.9,"seed":1}"#);
    write("inner_api", "bhttp_request", &inner.encode());
}
