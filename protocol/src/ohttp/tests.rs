use super::*;
use crate::bhttp_msg::InnerRequest;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// RFC 9458 Appendix A, "Complete Example of a Request and Response".
mod rfc9458 {
    pub const SK_R: &str = "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a";
    pub const KEY_CONFIG: &str =
        "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003";
    pub const REQUEST: &str = "00034745540568747470730b6578616d706c652e636f6d012f";
    pub const ENC_REQUEST: &str = "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1\
        9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796\
        5e7d86b83dd440b2c0185204b4d63525";
    pub const ENC: &str = "4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472";
    pub const RESPONSE: &str = "0140c8";
    pub const EXPORTED_SECRET: &str = "62d87a6ba569ee81014c2641f52bea36";
    pub const RESPONSE_NONCE: &str = "c789e7151fcba46158ca84b04464910d";
    pub const AEAD_KEY: &str = "5d0172a080e428b16d298c4ea0db620d";
    pub const AEAD_NONCE: &str = "f6bf1aeb88d6df87007fa263";
    pub const ENC_RESPONSE: &str = "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd";
}

/// A gateway holding the RFC's key, offering the RFC's suites
/// (HKDF-SHA256 with AES-128-GCM, then with ChaCha20-Poly1305).
fn rfc_gateway() -> GatewayKey {
    let mut g = GatewayKey::from_secret(1, &h(rfc9458::SK_R), &[Aead::Aes128Gcm]).unwrap();
    g.config.symmetric = vec![(KDF_HKDF_SHA256, 0x0001), (KDF_HKDF_SHA256, 0x0003)];
    g
}

#[test]
fn rfc9458_key_config_byte_for_byte() {
    let g = rfc_gateway();
    assert_eq!(hex::encode(g.config().encode()), rfc9458::KEY_CONFIG);
    assert_eq!(KeyConfig::decode(&h(rfc9458::KEY_CONFIG)).unwrap(), *g.config());
    // ChaCha20-Poly1305 is not ours; the client must pick AES-128-GCM from this config.
    assert_eq!(g.config().preferred_aead().unwrap(), Aead::Aes128Gcm);
}

#[test]
fn rfc9458_request_and_response_byte_for_byte() {
    // Binary HTTP encoding of "GET https://example.com/" as the RFC prints it.
    let mut m = bhttp::Message::request(b"GET".to_vec(), b"https".to_vec(), b"example.com".to_vec(), b"/".to_vec());
    let mut req = Vec::new();
    m.write_bhttp(bhttp::Mode::KnownLength, &mut req).unwrap();
    // RFC 9292 section 3.8 lets a sender drop trailing empty sections; the RFC's example does.
    let truncated = |v: &[u8]| hex::encode(v.strip_suffix(&[0, 0, 0][..]).unwrap_or(v));
    assert_eq!(truncated(&req), rfc9458::REQUEST);
    let parsed = InnerRequest::decode(&h(rfc9458::REQUEST)).unwrap();
    assert_eq!((parsed.method.as_str(), parsed.path.as_str()), ("GET", "/"));
    m = bhttp::Message::response(bhttp::StatusCode::try_from(200u16).unwrap());
    let mut resp = Vec::new();
    m.write_bhttp(bhttp::Mode::KnownLength, &mut resp).unwrap();
    assert_eq!(truncated(&resp), rfc9458::RESPONSE);

    // The gateway opens the RFC's encapsulated request to exactly that request.
    let g = rfc_gateway();
    let (opened, sealer) = g.open_request(&h(rfc9458::ENC_REQUEST)).unwrap();
    assert_eq!(hex::encode(&opened), rfc9458::REQUEST);
    assert_eq!(hex::encode(sealer.exported_secret()), rfc9458::EXPORTED_SECRET);

    // The response key schedule and the sealed response match the RFC.
    let cipher = ResponseCipher::derive(
        Aead::Aes128Gcm,
        &h(rfc9458::EXPORTED_SECRET),
        &h(rfc9458::ENC),
        &h(rfc9458::RESPONSE_NONCE),
    );
    assert_eq!(hex::encode(cipher.parts().0), rfc9458::AEAD_KEY);
    assert_eq!(hex::encode(cipher.parts().1), rfc9458::AEAD_NONCE);
    let sealed = sealer.seal_with_nonce(&h(rfc9458::RESPONSE), &h(rfc9458::RESPONSE_NONCE)).unwrap();
    assert_eq!(hex::encode(&sealed), rfc9458::ENC_RESPONSE);

    // A client holding the request's exported secret opens the RFC's response.
    let opener = ResponseOpener::from_parts(Aead::Aes128Gcm, h(rfc9458::EXPORTED_SECRET), h(rfc9458::ENC));
    assert_eq!(hex::encode(opener.open(&h(rfc9458::ENC_RESPONSE)).unwrap()), rfc9458::RESPONSE);
}

#[test]
fn rfc9458_tampered_request_fails_authentication() {
    let g = rfc_gateway();
    let good = h(rfc9458::ENC_REQUEST);
    for i in REQUEST_HEADER_LEN..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(g.open_request(&bad).is_err(), "byte {i} flipped was accepted");
    }
    let mut bad = good.clone();
    bad[0] = 9;
    assert_eq!(g.open_request(&bad).unwrap_err(), OhttpError::UnknownKeyId { expected: 1, found: 9 });
}

#[test]
fn seal_open_round_trip_aes256() {
    let g = GatewayKey::generate(7);
    assert_eq!(g.config().preferred_aead().unwrap(), Aead::Aes256Gcm);
    let config = KeyConfig::decode_list(&KeyConfig::encode_list(&[g.config().clone()])).unwrap().remove(0);
    let inner = InnerRequest::post_json("/v1/chat/completions", b"{\"x\":1}".to_vec()).encode();
    let (sealed, opener) = ClientRequest::new(&config).unwrap().seal(&inner).unwrap();
    assert_eq!(&sealed[5..7], &[0, 2], "AES-256-GCM on the wire");
    let (opened, sealer) = g.open_request(&sealed).unwrap();
    assert_eq!(opened, inner);
    let resp = sealer.seal(b"answer").unwrap();
    assert_eq!(opener.open(&resp).unwrap(), b"answer");
}

#[test]
fn response_tampering_and_wrong_key_detected() {
    let g = GatewayKey::generate(1);
    let (sealed, opener) = ClientRequest::new(g.config()).unwrap().seal(b"q").unwrap();
    let (_, sealer) = g.open_request(&sealed).unwrap();
    let mut resp = sealer.seal(b"answer").unwrap();
    let last = resp.len() - 1;
    resp[last] ^= 0x80;
    assert_eq!(opener.open(&resp).unwrap_err(), OhttpError::Authentication);

    let other = GatewayKey::generate(1);
    assert_eq!(other.open_request(&sealed).unwrap_err(), OhttpError::Authentication);
    assert!(matches!(g.open_request(&sealed[..20]), Err(OhttpError::Truncated { .. })));
}

fn chunked_exchange(n_chunks: usize) -> (Vec<u8>, ChunkedResponseOpener, Vec<u8>) {
    let g = GatewayKey::generate(3);
    let request = vec![0x42; 40_000]; // three request chunks
    let (sealed, opener) = ClientRequest::new(g.config()).unwrap().seal_chunked(&request).unwrap();
    let (opened, mut sealer) = g.open_chunked_request(&sealed).unwrap();
    assert_eq!(opened, request);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n_chunks {
        let piece = format!("token {i} ");
        wire.extend(sealer.seal_chunk(piece.as_bytes()).unwrap());
        expected.extend(piece.as_bytes());
    }
    wire.extend(sealer.seal_final(b"[end]").unwrap());
    expected.extend(b"[end]");
    (wire, opener, expected)
}

#[test]
fn chunked_many_chunks_streamed_in_odd_pieces() {
    let (wire, mut opener, expected) = chunked_exchange(1000);
    let mut got = Vec::new();
    for piece in wire.chunks(7) {
        got.extend(opener.push(piece).unwrap());
    }
    got.extend(opener.finish().unwrap());
    assert_eq!(got, expected);
}

#[test]
fn chunked_plaintext_arrives_before_the_end() {
    let (wire, mut opener, _) = chunked_exchange(3);
    let half = opener.push(&wire[..wire.len() - 30]).unwrap();
    assert!(half.starts_with(b"token 0 token 1 "), "chunks decrypt as they arrive");
}

#[test]
fn chunked_truncation_detected() {
    // Cut anywhere before the end: what arrived may decrypt, but finish() must fail.
    for cut_from_end in [1, 3, 1 + 5 + TAG_LEN, 40, 200] {
        let (wire, mut opener, _) = chunked_exchange(10);
        let r = opener.push(&wire[..wire.len() - cut_from_end]).and_then(|_| opener.finish());
        assert!(r.is_err(), "truncation by {cut_from_end} bytes accepted");
    }
    let (wire, mut opener, _) = chunked_exchange(10);
    opener.push(&wire[..wire.len() - 3]).unwrap();
    assert_eq!(opener.finish().unwrap_err(), OhttpError::Authentication);
    let (wire, mut opener, _) = chunked_exchange(10);
    opener.push(&wire[..wire.len() - (1 + 5 + TAG_LEN)]).unwrap();
    assert_eq!(opener.finish().unwrap_err(), OhttpError::MissingFinalChunk);
}

#[test]
fn chunked_reordering_and_flips_detected() {
    let len = chunked_exchange(5).0.len();
    for i in (0..len).step_by(3) {
        let (wire, mut opener, _) = chunked_exchange(5);
        let mut bad = wire.clone();
        bad[i] ^= 0x04;
        let r = opener.push(&bad).and_then(|_| opener.finish());
        assert!(r.is_err(), "flip at {i} accepted");
    }
}

#[test]
fn oversized_chunk_length_rejected_without_allocation() {
    let (wire, mut opener, _) = chunked_exchange(0);
    let nonce = &wire[..32];
    let mut evil = nonce.to_vec();
    write_varint(&mut evil, 1 << 40);
    assert!(matches!(opener.push(&evil), Err(OhttpError::ChunkTooLarge { .. })));
}

#[test]
fn key_config_parser_rejects_garbage() {
    assert!(KeyConfig::decode_list(&[]).is_err());
    assert!(KeyConfig::decode_list(&[0, 50, 1, 2]).is_err());
    assert!(KeyConfig::decode(&h(rfc9458::KEY_CONFIG)[..20]).is_err());
    let mut p256 = h(rfc9458::KEY_CONFIG);
    p256[2] = 0x10;
    assert!(matches!(KeyConfig::decode(&p256), Err(OhttpError::UnsupportedSuite { .. })));
    assert!(matches!(KeyConfig::decode_list(&vec![0u8; 10_000]), Err(OhttpError::TooLarge { .. })));
}

/// Interop with the `ohttp` crate (an independent implementation). Its pure-Rust
/// backend speaks AES-128-GCM, so these exchanges use that suite.
mod interop {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt, executor::block_on};

    fn their_gateway() -> (ohttp::Server, KeyConfig) {
        let config = ohttp::KeyConfig::new(
            5,
            ohttp::hpke::Kem::X25519Sha256,
            vec![ohttp::SymmetricSuite::new(ohttp::hpke::Kdf::HkdfSha256, ohttp::hpke::Aead::Aes128Gcm)],
        )
        .unwrap();
        let ours = KeyConfig::decode(&config.encode().unwrap()).unwrap();
        (ohttp::Server::new(config).unwrap(), ours)
    }

    #[test]
    fn our_client_their_gateway() {
        let (server, config) = their_gateway();
        let (sealed, opener) = ClientRequest::new(&config).unwrap().seal(b"hello").unwrap();
        let (req, resp) = server.decapsulate(&sealed).unwrap();
        assert_eq!(req, b"hello");
        assert_eq!(opener.open(&resp.encapsulate(b"world").unwrap()).unwrap(), b"world");
    }

    #[test]
    fn their_client_our_gateway() {
        let g = GatewayKey::from_secret(2, &[0x11; 32], &[Aead::Aes128Gcm]).unwrap();
        let client = ohttp::ClientRequest::from_encoded_config(&g.config().encode()).unwrap();
        let (sealed, resp_ctx) = client.encapsulate(b"hello").unwrap();
        let (req, sealer) = g.open_request(&sealed).unwrap();
        assert_eq!(req, b"hello");
        assert_eq!(resp_ctx.decapsulate(&sealer.seal(b"world").unwrap()).unwrap(), b"world");
    }

    #[test]
    fn chunked_their_client_our_gateway() {
        let g = GatewayKey::from_secret(2, &[0x22; 32], &[Aead::Aes128Gcm]).unwrap();
        let client = ohttp::ClientRequest::from_encoded_config(&g.config().encode()).unwrap();
        let sink = Sink::default();
        let mut stream = client.encapsulate_stream(sink.clone()).unwrap();
        let request = vec![0x61; 20_000];
        block_on(async {
            stream.write_all(&request).await.unwrap();
            stream.close().await.unwrap();
        });
        let sealed = sink.0.borrow().clone();
        let (opened, mut sealer) = g.open_chunked_request(&sealed).unwrap();
        assert_eq!(opened, request);
        let mut wire = sealer.seal_chunk(b"first ").unwrap();
        wire.extend(sealer.seal_chunk(b"second ").unwrap());
        wire.extend(sealer.seal_final(b"last").unwrap());
        let mut reader = stream.response(&wire[..]).unwrap();
        let mut got = Vec::new();
        block_on(reader.read_to_end(&mut got)).unwrap();
        assert_eq!(got, b"first second last");
    }

    #[test]
    fn chunked_our_client_their_gateway() {
        let (server, config) = their_gateway();
        let request = vec![0x62; 40_000];
        let (sealed, mut opener) = ClientRequest::new(&config).unwrap().seal_chunked(&request).unwrap();
        let mut srv = server.decapsulate_stream(&sealed[..]);
        let mut got = Vec::new();
        block_on(srv.read_to_end(&mut got)).unwrap();
        assert_eq!(got, request);
        let mut wire = Vec::new();
        let mut w = srv.response(&mut wire).unwrap();
        block_on(async {
            w.write_all(b"streamed answer").await.unwrap();
            w.close().await.unwrap();
        });
        let mut out = opener.push(&wire).unwrap();
        out.extend(opener.finish().unwrap());
        assert_eq!(out, b"streamed answer");
    }

    /// A writer whose bytes stay readable after the `ohttp` stream takes ownership of it.
    #[derive(Clone, Default)]
    struct Sink(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl futures::AsyncWrite for Sink {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.borrow_mut().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
}
