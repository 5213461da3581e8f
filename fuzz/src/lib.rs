//! The bodies of the fuzz targets, shared by `cargo fuzz` (fuzz_targets/)
//! and by the workspace test that replays every seed and corpus file
//! (tests/tests/fuzz_corpus.rs), so that `make test` exercises them without
//! a nightly toolchain.

use std::sync::OnceLock;

use cocoon_protocol::bhttp_msg::{InnerRequest, InnerResponse, StreamingResponseDecoder};
use cocoon_protocol::ohttp::{Aead, ChunkedResponseOpener, ClientRequest, GatewayKey, ResponseOpener};
use cocoon_protocol::{Prices, Receipt};

/// The gateway key every OHTTP target opens with: fixed, so seeds sealed to it stay valid.
pub fn gateway() -> &'static GatewayKey {
    static KEY: OnceLock<GatewayKey> = OnceLock::new();
    KEY.get_or_init(|| GatewayKey::from_secret(1, &[0x42; 32], &[Aead::Aes128Gcm]).expect("fixed test key"))
}

/// Outside bytes as a sealed request (whole or chunked), opened by the
/// enclave's gateway; and as a sealed response, opened by a client.
pub fn ohttp(data: &[u8]) {
    let g = gateway();
    if let Ok((plain, sealer)) = g.open_request(data) {
        let _ = sealer.seal(&plain);
    }
    if let Ok((plain, mut sealer)) = g.open_chunked_request(data) {
        let _ = sealer.seal_chunk(&plain);
    }
    // The response side: a client opening what a worker (or anyone on the path) sent.
    let opener = ResponseOpener::from_parts(Aead::Aes128Gcm, vec![7; 16], vec![9; 32]);
    let _ = opener.open(data);
    let mut chunked = ChunkedResponseOpener::from_parts(Aead::Aes128Gcm, vec![7; 16], vec![9; 32]);
    let mid = data.len() / 2;
    if chunked.push(&data[..mid]).is_ok() && chunked.push(&data[mid..]).is_ok() {
        let _ = chunked.finish();
    }
    // A request sealed by a real client with this plaintext opens to the same bytes.
    if data.len() <= 4096
        && let Ok(client) = ClientRequest::new(g.config())
        && let Ok((sealed, _)) = client.seal_chunked(data)
    {
        let (plain, _) = g.open_chunked_request(&sealed).expect("a client's own sealed request opens");
        assert_eq!(plain, data);
    }
}

/// Binary HTTP: the inner request the enclave decodes, the inner response and
/// the streamed response a client decodes (fed in two pieces).
pub fn bhttp(data: &[u8]) {
    if let Ok(r) = InnerRequest::decode(data) {
        let _ = r.date();
        let again = InnerRequest::decode(&r.encode()).expect("a decoded request re-encodes");
        assert_eq!(again, r);
    }
    let _ = InnerResponse::decode(data);
    let mut d = StreamingResponseDecoder::new();
    let cut = data.first().map(|&b| b as usize % (data.len() + 1)).unwrap_or(0);
    if d.push(&data[..cut]).is_ok() {
        let _ = d.push(&data[cut..]);
    }
}

/// A usage receipt (COSE_Sign1) from a worker, checked under a fixed key.
pub fn receipt(data: &[u8]) {
    let _ = Receipt::verify(data, &[3; 32]);
    if let Ok(key) = ed25519_key(data) {
        let _ = Receipt::verify(&data[32..], &key);
    }
}

fn ed25519_key(data: &[u8]) -> Result<[u8; 32], ()> {
    data.get(..32).and_then(|k| k.try_into().ok()).ok_or(())
}

/// The prices the inner-API target charges at.
pub const PRICES: Prices =
    Prices { prompt_per_1k: cocoon_protocol::NanoTon(1_000), completion_per_1k: cocoon_protocol::NanoTon(3_000) };

/// The inner request as the enclave's API parses it: BHTTP first, then, as a
/// chat completion body, the same bytes as JSON. Returns the inner requests
/// built, for a driver that has an API to hand them to.
pub fn inner_requests(data: &[u8]) -> Vec<InnerRequest> {
    let mut out = Vec::new();
    if let Ok(r) = InnerRequest::decode(data) {
        out.push(r);
    }
    let mut chat = InnerRequest::post_json("/v1/chat/completions", data.to_vec());
    chat.headers.push(("cocoon-max-worker-cost".into(), String::from_utf8_lossy(&data[..data.len().min(24)]).into()));
    out.push(chat);
    out.push(InnerRequest::post_json("/v1/completions", data.to_vec()));
    out
}

/// An NVIDIA GPU attestation report (SPDM request and signed measurements),
/// parsed and then verified with a real H100 chain for its own nonce, so that
/// mutations reach the signature and certificate checks.
pub fn spdm(data: &[u8]) {
    static CHAIN: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let chain = CHAIN.get_or_init(|| {
        let pem = include_bytes!("../../attestation/tests/data/gpu/nvtrust-hopper/hopperCertChain.txt");
        cocoon_attestation::nvidia::chain_from_pem(pem).expect("the fixture chain parses")
    });
    if let Ok(r) = cocoon_attestation::spdm::GpuReport::parse(data) {
        assert_eq!(r.signed.end + cocoon_attestation::spdm::SIGNATURE_LEN, data.len());
        let _ = r.block(1);
        let _ = cocoon_attestation::nvidia::verify_gpu_report(data, chain, &r.nonce, 1_800_000_000);
    }
}

/// An NVIDIA RIM (XML): parsed, canonicalised whole, and verified as
/// `cocoon measure-gpu` does at a time inside the fixture signers' windows,
/// so that mutations reach the canonicaliser, the signature profile, the
/// chain and the content reader.
pub fn rim(data: &[u8]) {
    if let Ok(doc) = cocoon_attestation::xml::parse(data) {
        let canonical = cocoon_attestation::xml::canonicalize(&doc, cocoon_attestation::xml::Subset::Document)
            .expect("a parsed document canonicalises");
        // The canonical form is itself a document with the same canonical form.
        let again = cocoon_attestation::xml::parse(&canonical).expect("the canonical form parses");
        assert_eq!(
            cocoon_attestation::xml::canonicalize(&again, cocoon_attestation::xml::Subset::Document).unwrap(),
            canonical
        );
    }
    // 2023-10-01: inside every signed fixture RIM's signer window.
    if let Ok(rim) = cocoon_attestation::rim::verify_rim(data, 1_696_118_400) {
        assert!(!rim.measurements.is_empty());
    }
}

/// Outside bytes as the TON side reads them: a BOC (a claim, a proxy entry,
/// registry dictionaries, a snake string), a toncenter get-method stack (a
/// channel's state), a signed voucher and a channel descriptor (JSON).
pub fn ton(data: &[u8]) {
    use cocoon_ton::channel::{ChannelDescriptor, ChannelState, SignedVoucher, voucher_from_claim_body};
    use cocoon_ton::registry::{ProxyEntry, images_from, models_from, proxies_from};

    if let Ok(cell) = cocoon_ton::parse_boc(data, 64 * 1024) {
        let _ = voucher_from_claim_body(&cell);
        let _ = ProxyEntry::from_cell(&cell);
        let _ = images_from(Some(&cell));
        let _ = models_from(Some(&cell));
        let _ = proxies_from(Some(&cell));
        let _ = cocoon_ton::snake::decode(&cell, 4096);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(stack) = cocoon_ton::stack::from_toncenter(&value)
            && let Ok(state) = ChannelState::from_stack(&stack)
        {
            let _ = state.claimable(u64::MAX / 2);
            let _ = state.binding();
        }
        if let Ok(v) = serde_json::from_value::<SignedVoucher>(value.clone())
            && let Ok(voucher) = v.voucher()
        {
            let _ = v.verify(&voucher.channel, &voucher.binding, &[7; 32]);
            let _ = v.claim_body(1);
        }
        if let Ok(d) = serde_json::from_value::<ChannelDescriptor>(value) {
            let _ = d.params();
            let _ = d.binding();
        }
    }
}

/// Outside bytes as a CTranslate2 `model.bin` (a worker operator's model file).
pub fn ct2(data: &[u8]) {
    if let Ok(model) = cocoon_engine::asr::ct2::Ct2Model::parse(data.to_vec()) {
        let names: Vec<String> = model.names().map(str::to_owned).collect();
        for name in names {
            let _ = model.f32(&name);
            let _ = model.scalar_int(&name);
        }
    }
}

/// Outside bytes as an uploaded audio file (WAV, FLAC, MP3, Ogg Opus or anything else).
pub fn audio(data: &[u8]) {
    let limits = cocoon_engine::asr::audio::AudioLimits { max_bytes: 1 << 20, max_seconds: 30 };
    let _ = cocoon_engine::asr::audio::decode(data, &limits);
}
