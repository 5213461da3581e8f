//! Oblivious HTTP (RFC 9458) and chunked Oblivious HTTP
//! (draft-ietf-ohai-chunked-ohttp) over HPKE (RFC 9180).
//!
//! The primitives come from maintained crates: `hpke` (DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256, AES-GCM), `hkdf` and `aes-gcm`. This module only
//! frames them as the RFCs say. We do not use the `ohttp` crate here because
//! its pure-Rust backend implements neither AES-256-GCM (our suite) nor loading
//! a gateway key from its bytes (needed to check RFC 9458's Appendix A); it
//! serves instead as an independent implementation in the interop tests.
//!
//! Everything is sans-I/O: a request is sealed or opened whole (requests are
//! small and bounded), and a chunked response is produced and consumed chunk
//! by chunk so that tokens stream.

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use sha2::Sha256;

use crate::limits;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;

/// HPKE KEM id of DHKEM(X25519, HKDF-SHA256).
pub const KEM_X25519_SHA256: u16 = 0x0020;
/// HPKE KDF id of HKDF-SHA256.
pub const KDF_HKDF_SHA256: u16 = 0x0001;

const PUBLIC_KEY_LEN: usize = 32;
const ENC_LEN: usize = 32;
const REQUEST_HEADER_LEN: usize = 7;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

const LABEL_REQUEST: &[u8] = b"message/bhttp request";
const LABEL_RESPONSE: &[u8] = b"message/bhttp response";
const LABEL_CHUNKED_REQUEST: &[u8] = b"message/bhttp chunked request";
const LABEL_CHUNKED_RESPONSE: &[u8] = b"message/bhttp chunked response";
const FINAL_CHUNK_AAD: &[u8] = b"final";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OhttpError {
    #[error("OHTTP message truncated: expected at least {expected} bytes, found {found}")]
    Truncated { expected: usize, found: usize },
    #[error("OHTTP message of {found} bytes exceeds the limit of {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("unsupported HPKE suite: KEM {kem:#06x}, KDF {kdf:#06x}, AEAD {aead:#06x}")]
    UnsupportedSuite { kem: u16, kdf: u16, aead: u16 },
    #[error("request is for key id {found}, this gateway has key id {expected}")]
    UnknownKeyId { expected: u8, found: u8 },
    #[error("malformed key configuration: {0}")]
    BadKeyConfig(&'static str),
    #[error("no usable key configuration (need X25519/HKDF-SHA256 with AES-GCM)")]
    NoUsableConfig,
    #[error("invalid HPKE encapsulated key")]
    BadEncapsulatedKey,
    #[error("decryption failed: the message was altered or sealed for another key")]
    Authentication,
    #[error("chunked stream ended without its final chunk (truncated)")]
    MissingFinalChunk,
    #[error("chunk of {found} bytes exceeds the limit of {limit}")]
    ChunkTooLarge { found: usize, limit: usize },
    #[error("data after the final chunk")]
    DataAfterFinal,
    #[error("HPKE failure: {0}")]
    Hpke(String),
}

type Result<T> = std::result::Result<T, OhttpError>;

/// AEADs we speak. AES-256-GCM is what we offer and prefer; AES-128-GCM is
/// accepted from peers (it is RFC 9458's example suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    Aes128Gcm,
    Aes256Gcm,
}

impl Aead {
    pub fn id(self) -> u16 {
        match self {
            Aead::Aes128Gcm => 0x0001,
            Aead::Aes256Gcm => 0x0002,
        }
    }

    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            0x0001 => Some(Aead::Aes128Gcm),
            0x0002 => Some(Aead::Aes256Gcm),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm => 32,
        }
    }

    /// max(Nn, Nk): the length of the response nonce and exported secret.
    fn secret_len(self) -> usize {
        self.key_len().max(NONCE_LEN)
    }
}

/// One key configuration (RFC 9458 section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub key_id: u8,
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// (KDF id, AEAD id) pairs, in the gateway's order of preference.
    pub symmetric: Vec<(u16, u16)>,
}

impl KeyConfig {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + PUBLIC_KEY_LEN + 2 + 4 * self.symmetric.len());
        out.push(self.key_id);
        out.extend_from_slice(&KEM_X25519_SHA256.to_be_bytes());
        out.extend_from_slice(&self.public_key);
        let len = u16::try_from(4 * self.symmetric.len()).expect("a handful of suites");
        out.extend_from_slice(&len.to_be_bytes());
        for (kdf, aead) in &self.symmetric {
            out.extend_from_slice(&kdf.to_be_bytes());
            out.extend_from_slice(&aead.to_be_bytes());
        }
        out
    }

    /// Decodes one configuration that must fill `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let config = Self::read(&mut r)?;
        if !r.is_empty() {
            return Err(OhttpError::BadKeyConfig("trailing bytes after the key configuration"));
        }
        Ok(config)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let key_id = r.u8().ok_or(OhttpError::BadKeyConfig("missing key id"))?;
        let kem = r.u16().ok_or(OhttpError::BadKeyConfig("missing KEM id"))?;
        if kem != KEM_X25519_SHA256 {
            return Err(OhttpError::UnsupportedSuite { kem, kdf: 0, aead: 0 });
        }
        let pk = r.take(PUBLIC_KEY_LEN).ok_or(OhttpError::BadKeyConfig("public key truncated"))?;
        let sym_len = r.u16().ok_or(OhttpError::BadKeyConfig("missing algorithms length"))? as usize;
        if sym_len == 0 || !sym_len.is_multiple_of(4) {
            return Err(OhttpError::BadKeyConfig("algorithms length is not a positive multiple of 4"));
        }
        let sym = r.take(sym_len).ok_or(OhttpError::BadKeyConfig("algorithms truncated"))?;
        let symmetric =
            sym.chunks_exact(4).map(|c| (u16::from_be_bytes([c[0], c[1]]), u16::from_be_bytes([c[2], c[3]]))).collect();
        Ok(KeyConfig { key_id, public_key: pk.try_into().expect("length checked"), symmetric })
    }

    /// Encodes a list as `application/ohttp-keys` (each config prefixed by its 2-byte length).
    pub fn encode_list(configs: &[KeyConfig]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in configs {
            let enc = c.encode();
            out.extend_from_slice(&u16::try_from(enc.len()).expect("small").to_be_bytes());
            out.extend_from_slice(&enc);
        }
        out
    }

    /// Decodes an `application/ohttp-keys` document.
    pub fn decode_list(bytes: &[u8]) -> Result<Vec<Self>> {
        if bytes.len() > limits::MAX_KEY_CONFIGS {
            return Err(OhttpError::TooLarge { found: bytes.len(), limit: limits::MAX_KEY_CONFIGS });
        }
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while !r.is_empty() {
            let len = r.u16().ok_or(OhttpError::BadKeyConfig("list entry length truncated"))? as usize;
            let entry = r.take(len).ok_or(OhttpError::BadKeyConfig("list entry truncated"))?;
            out.push(Self::decode(entry)?);
        }
        if out.is_empty() {
            return Err(OhttpError::BadKeyConfig("empty key configuration list"));
        }
        Ok(out)
    }

    /// The suite a client uses with this config: AES-256-GCM if offered, else AES-128-GCM.
    pub fn preferred_aead(&self) -> Result<Aead> {
        let offered = |a: Aead| self.symmetric.iter().any(|&(k, x)| k == KDF_HKDF_SHA256 && x == a.id());
        [Aead::Aes256Gcm, Aead::Aes128Gcm].into_iter().find(|&a| offered(a)).ok_or(OhttpError::NoUsableConfig)
    }
}

/// The gateway's (the enclave's) key pair. The private half never leaves this value.
pub struct GatewayKey {
    config: KeyConfig,
    secret: <Kem as hpke::Kem>::PrivateKey,
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey").field("config", &self.config).finish_non_exhaustive()
    }
}

impl GatewayKey {
    /// A fresh key pair offering AES-256-GCM only.
    pub fn generate(key_id: u8) -> Self {
        let (secret, public) = Kem::gen_keypair();
        let config = KeyConfig {
            key_id,
            public_key: public.to_bytes().into(),
            symmetric: vec![(KDF_HKDF_SHA256, Aead::Aes256Gcm.id())],
        };
        GatewayKey { config, secret }
    }

    /// A gateway key from its private key bytes (for known-answer tests).
    pub fn from_secret(key_id: u8, secret: &[u8], aeads: &[Aead]) -> Result<Self> {
        let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret).map_err(|e| OhttpError::Hpke(e.to_string()))?;
        let public = Kem::sk_to_pk(&secret);
        let config = KeyConfig {
            key_id,
            public_key: public.to_bytes().into(),
            symmetric: aeads.iter().map(|a| (KDF_HKDF_SHA256, a.id())).collect(),
        };
        Ok(GatewayKey { config, secret })
    }

    pub fn config(&self) -> &KeyConfig {
        &self.config
    }

    /// Opens a `message/ohttp-req`, returning the Binary HTTP request and the
    /// sealer for its response.
    pub fn open_request(&self, enc_request: &[u8]) -> Result<(Vec<u8>, ResponseSealer)> {
        let (mut ctx, enc, aead, body) = self.receiver(enc_request, LABEL_REQUEST)?;
        let request = ctx.open(body, b"")?;
        let secret = ctx.export(LABEL_RESPONSE, aead.secret_len())?;
        Ok((request, ResponseSealer { aead, secret, enc }))
    }

    /// Opens a whole `message/ohttp-chunked-req`, returning the concatenated
    /// plaintext and the sealer for the chunked response.
    pub fn open_chunked_request(&self, enc_request: &[u8]) -> Result<(Vec<u8>, ChunkedResponseSealer)> {
        let (mut ctx, enc, aead, mut body) = self.receiver(enc_request, LABEL_CHUNKED_REQUEST)?;
        let mut plaintext = Vec::new();
        loop {
            let mut r = Reader::new(body);
            let len = r.varint().ok_or(OhttpError::MissingFinalChunk)?;
            if len == 0 {
                plaintext.extend(ctx.open(r.rest(), FINAL_CHUNK_AAD)?);
                break;
            }
            let len = chunk_len(len)?;
            let chunk = r.take(len).ok_or(OhttpError::MissingFinalChunk)?;
            plaintext.extend(ctx.open(chunk, b"")?);
            body = r.rest();
        }
        let secret = ctx.export(LABEL_CHUNKED_RESPONSE, aead.secret_len())?;
        Ok((plaintext, ChunkedResponseSealer::new(aead, &secret, &enc)))
    }

    fn receiver<'a>(&self, msg: &'a [u8], label: &[u8]) -> Result<(ReceiverCtx, Vec<u8>, Aead, &'a [u8])> {
        if msg.len() > limits::MAX_SEALED_REQUEST {
            return Err(OhttpError::TooLarge { found: msg.len(), limit: limits::MAX_SEALED_REQUEST });
        }
        let min = REQUEST_HEADER_LEN + ENC_LEN + TAG_LEN;
        if msg.len() < min {
            return Err(OhttpError::Truncated { expected: min, found: msg.len() });
        }
        let header = &msg[..REQUEST_HEADER_LEN];
        let key_id = header[0];
        let kem = u16::from_be_bytes([header[1], header[2]]);
        let kdf = u16::from_be_bytes([header[3], header[4]]);
        let aead_id = u16::from_be_bytes([header[5], header[6]]);
        if key_id != self.config.key_id {
            return Err(OhttpError::UnknownKeyId { expected: self.config.key_id, found: key_id });
        }
        let offered = self.config.symmetric.contains(&(kdf, aead_id));
        let aead = match Aead::from_id(aead_id) {
            Some(a) if kem == KEM_X25519_SHA256 && kdf == KDF_HKDF_SHA256 && offered => a,
            _ => return Err(OhttpError::UnsupportedSuite { kem, kdf, aead: aead_id }),
        };
        let enc = &msg[REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + ENC_LEN];
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| OhttpError::BadEncapsulatedKey)?;
        let info = info(label, header);
        let ctx = ReceiverCtx::new(aead, &self.secret, &encapped, &info)?;
        Ok((ctx, enc.to_vec(), aead, &msg[REQUEST_HEADER_LEN + ENC_LEN..]))
    }
}

/// The encapsulated key of a sealed request (`message/ohttp-req` or
/// `message/ohttp-chunked-req`): fresh for every request a client seals, so
/// a gateway that has seen it before is looking at a replay.
pub fn encapsulated_key(enc_request: &[u8]) -> Option<&[u8]> {
    enc_request.get(REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + ENC_LEN)
}

fn info(label: &[u8], header: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(label.len() + 1 + header.len());
    info.extend_from_slice(label);
    info.push(0);
    info.extend_from_slice(header);
    info
}

fn request_header(config: &KeyConfig, aead: Aead) -> [u8; REQUEST_HEADER_LEN] {
    let mut h = [0u8; REQUEST_HEADER_LEN];
    h[0] = config.key_id;
    h[1..3].copy_from_slice(&KEM_X25519_SHA256.to_be_bytes());
    h[3..5].copy_from_slice(&KDF_HKDF_SHA256.to_be_bytes());
    h[5..7].copy_from_slice(&aead.id().to_be_bytes());
    h
}

fn chunk_len(len: u64) -> Result<usize> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > limits::MAX_CHUNK_CIPHERTEXT {
        return Err(OhttpError::ChunkTooLarge { found: len, limit: limits::MAX_CHUNK_CIPHERTEXT });
    }
    Ok(len)
}

/// The client's side of one request.
pub struct ClientRequest {
    config: KeyConfig,
    aead: Aead,
}

impl ClientRequest {
    pub fn new(config: &KeyConfig) -> Result<Self> {
        Ok(ClientRequest { config: config.clone(), aead: config.preferred_aead()? })
    }

    /// Seals `request` as `message/ohttp-req`.
    pub fn seal(self, request: &[u8]) -> Result<(Vec<u8>, ResponseOpener)> {
        let (mut out, mut ctx, enc) = self.sender(LABEL_REQUEST)?;
        out.extend(ctx.seal(request, b"")?);
        let secret = ctx.export(LABEL_RESPONSE, self.aead.secret_len())?;
        Ok((out, ResponseOpener { aead: self.aead, secret, enc }))
    }

    /// Seals `request` as `message/ohttp-chunked-req`: full chunks of at most
    /// [`limits::MAX_CHUNK_PLAINTEXT`] bytes, then the final chunk.
    pub fn seal_chunked(self, request: &[u8]) -> Result<(Vec<u8>, ChunkedResponseOpener)> {
        let (mut out, mut ctx, enc) = self.sender(LABEL_CHUNKED_REQUEST)?;
        let mut rest = request;
        while rest.len() > limits::MAX_CHUNK_PLAINTEXT {
            let (chunk, tail) = rest.split_at(limits::MAX_CHUNK_PLAINTEXT);
            let ct = ctx.seal(chunk, b"")?;
            write_varint(&mut out, ct.len() as u64);
            out.extend(ct);
            rest = tail;
        }
        write_varint(&mut out, 0);
        out.extend(ctx.seal(rest, FINAL_CHUNK_AAD)?);
        let secret = ctx.export(LABEL_CHUNKED_RESPONSE, self.aead.secret_len())?;
        Ok((out, ChunkedResponseOpener::new(self.aead, secret, enc)))
    }

    fn sender(&self, label: &[u8]) -> Result<(Vec<u8>, SenderCtx, Vec<u8>)> {
        let header = request_header(&self.config, self.aead);
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&self.config.public_key)
            .map_err(|e| OhttpError::Hpke(e.to_string()))?;
        let (ctx, enc) = SenderCtx::new(self.aead, &pk, &info(label, &header))?;
        let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + ENC_LEN + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&enc);
        Ok((out, ctx, enc))
    }
}

/// Seals the single response to a `message/ohttp-req` (RFC 9458 section 4.4).
#[derive(Debug)]
pub struct ResponseSealer {
    aead: Aead,
    secret: Vec<u8>,
    enc: Vec<u8>,
}

impl ResponseSealer {
    pub fn seal(self, response: &[u8]) -> Result<Vec<u8>> {
        let nonce = random_bytes(self.aead.secret_len());
        self.seal_with_nonce(response, &nonce)
    }

    /// Sealing with a given response nonce: only for known-answer tests.
    #[doc(hidden)]
    pub fn seal_with_nonce(self, response: &[u8], response_nonce: &[u8]) -> Result<Vec<u8>> {
        let cipher = ResponseCipher::derive(self.aead, &self.secret, &self.enc, response_nonce);
        let mut out = response_nonce.to_vec();
        out.extend(cipher.seal(0, b"", response)?);
        Ok(out)
    }

    /// The exported response secret (known-answer tests check it).
    #[doc(hidden)]
    pub fn exported_secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Opens the single response to a `message/ohttp-req`.
pub struct ResponseOpener {
    aead: Aead,
    secret: Vec<u8>,
    enc: Vec<u8>,
}

impl ResponseOpener {
    pub fn open(self, enc_response: &[u8]) -> Result<Vec<u8>> {
        if enc_response.len() > limits::MAX_SEALED_RESPONSE {
            return Err(OhttpError::TooLarge { found: enc_response.len(), limit: limits::MAX_SEALED_RESPONSE });
        }
        let n = self.aead.secret_len();
        if enc_response.len() < n + TAG_LEN {
            return Err(OhttpError::Truncated { expected: n + TAG_LEN, found: enc_response.len() });
        }
        let (nonce, ct) = enc_response.split_at(n);
        ResponseCipher::derive(self.aead, &self.secret, &self.enc, nonce).open(0, b"", ct)
    }

    /// An opener from a secret exported elsewhere: only for known-answer tests.
    #[doc(hidden)]
    pub fn from_parts(aead: Aead, secret: Vec<u8>, enc: Vec<u8>) -> Self {
        ResponseOpener { aead, secret, enc }
    }
}

/// Produces a `message/ohttp-chunked-res` chunk by chunk.
#[derive(Debug)]
pub struct ChunkedResponseSealer {
    cipher: ResponseCipher,
    header: Option<Vec<u8>>,
    seq: u64,
}

impl ChunkedResponseSealer {
    fn new(aead: Aead, secret: &[u8], enc: &[u8]) -> Self {
        let nonce = random_bytes(aead.secret_len());
        let cipher = ResponseCipher::derive(aead, secret, enc, &nonce);
        ChunkedResponseSealer { cipher, header: Some(nonce), seq: 0 }
    }

    /// Seals a non-final chunk; the first call also emits the response nonce.
    /// Large inputs are split so that no chunk exceeds the chunk limit.
    pub fn seal_chunk(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = self.header.take().unwrap_or_default();
        for piece in plaintext.chunks(limits::MAX_CHUNK_PLAINTEXT) {
            let ct = self.cipher.seal(self.seq, b"", piece)?;
            self.seq += 1;
            write_varint(&mut out, ct.len() as u64);
            out.extend(ct);
        }
        Ok(out)
    }

    /// Seals the final chunk, which authenticates the end of the stream.
    pub fn seal_final(mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (head, last) = plaintext.split_at(plaintext.len().saturating_sub(limits::MAX_CHUNK_PLAINTEXT));
        let mut out = if head.is_empty() { self.header.take().unwrap_or_default() } else { self.seal_chunk(head)? };
        write_varint(&mut out, 0);
        out.extend(self.cipher.seal(self.seq, FINAL_CHUNK_AAD, last)?);
        Ok(out)
    }
}

/// Consumes a `message/ohttp-chunked-res` as bytes arrive.
pub struct ChunkedResponseOpener {
    buf: Vec<u8>,
    total: usize,
    state: OpenerState,
}

/// Where a chunked response is: before its response nonce (no key yet), in
/// its non-final chunks, or in its final chunk (which only the end of the
/// stream delimits, RFC 9458 with the chunked draft's framing).
enum OpenerState {
    AwaitingNonce { aead: Aead, secret: Vec<u8>, enc: Vec<u8> },
    Chunks { cipher: ResponseCipher, seq: u64 },
    Final { cipher: ResponseCipher, seq: u64 },
}

impl ChunkedResponseOpener {
    /// An opener from its parts (the request's exported secret and
    /// encapsulated key), for tests and fuzzing.
    pub fn from_parts(aead: Aead, secret: Vec<u8>, enc: Vec<u8>) -> Self {
        Self::new(aead, secret, enc)
    }

    fn new(aead: Aead, secret: Vec<u8>, enc: Vec<u8>) -> Self {
        ChunkedResponseOpener { buf: Vec::new(), total: 0, state: OpenerState::AwaitingNonce { aead, secret, enc } }
    }

    /// Feeds received bytes; returns the plaintext of every chunk completed by them.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.total = self.total.saturating_add(data.len());
        if self.total > limits::MAX_STREAMED_RESPONSE {
            return Err(OhttpError::TooLarge { found: self.total, limit: limits::MAX_STREAMED_RESPONSE });
        }
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        if let OpenerState::AwaitingNonce { aead, secret, enc } = &self.state {
            let n = aead.secret_len();
            if self.buf.len() < n {
                return Ok(out);
            }
            let nonce: Vec<u8> = self.buf.drain(..n).collect();
            let cipher = ResponseCipher::derive(*aead, secret, enc, &nonce);
            self.state = OpenerState::Chunks { cipher, seq: 0 };
        }
        if let OpenerState::Chunks { cipher, seq } = &mut self.state {
            // Walk every complete chunk, then drop what was consumed in one move.
            let mut r = Reader::new(&self.buf);
            let mut final_chunk = false;
            loop {
                let checkpoint = r.rest();
                let Some(len) = r.varint() else { break };
                if len == 0 {
                    final_chunk = true;
                    break;
                }
                let len = chunk_len(len)?;
                let Some(ct) = r.take(len) else {
                    r = Reader::new(checkpoint);
                    break;
                };
                out.extend(cipher.open(*seq, b"", ct)?);
                *seq += 1;
            }
            let consumed = self.buf.len() - r.rest().len();
            self.buf.drain(..consumed);
            if final_chunk {
                self.state = OpenerState::Final { cipher: cipher.clone(), seq: *seq };
            }
        }
        if matches!(self.state, OpenerState::Final { .. }) && self.buf.len() > limits::MAX_CHUNK_CIPHERTEXT {
            return Err(OhttpError::ChunkTooLarge { found: self.buf.len(), limit: limits::MAX_CHUNK_CIPHERTEXT });
        }
        Ok(out)
    }

    /// Called at the end of the stream: opens the final chunk, or reports truncation.
    pub fn finish(self) -> Result<Vec<u8>> {
        match self.state {
            OpenerState::Final { cipher, seq } => cipher.open(seq, FINAL_CHUNK_AAD, &self.buf),
            OpenerState::AwaitingNonce { .. } | OpenerState::Chunks { .. } => Err(OhttpError::MissingFinalChunk),
        }
    }
}

#[derive(Debug, Clone)]
/// The response AEAD of RFC 9458 section 4.4, with the chunk counter of the
/// chunked draft XORed into the nonce.
struct ResponseCipher {
    aead: Aead,
    key: Vec<u8>,
    nonce: [u8; NONCE_LEN],
}

impl ResponseCipher {
    fn derive(aead: Aead, secret: &[u8], enc: &[u8], response_nonce: &[u8]) -> Self {
        let mut salt = enc.to_vec();
        salt.extend_from_slice(response_nonce);
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), secret);
        let mut key = vec![0u8; aead.key_len()];
        let mut nonce = [0u8; NONCE_LEN];
        hk.expand(b"key", &mut key).expect("short output");
        hk.expand(b"nonce", &mut nonce).expect("short output");
        ResponseCipher { aead, key, nonce }
    }

    fn nonce_for(&self, seq: u64) -> [u8; NONCE_LEN] {
        let mut n = self.nonce;
        for (i, b) in seq.to_be_bytes().iter().enumerate() {
            n[NONCE_LEN - 8 + i] ^= b;
        }
        n
    }

    fn seal(&self, seq: u64, aad: &[u8], pt: &[u8]) -> Result<Vec<u8>> {
        let nonce = self.nonce_for(seq);
        let payload = Payload { msg: pt, aad };
        let r = match self.aead {
            Aead::Aes128Gcm => {
                aes_gcm::Aes128Gcm::new_from_slice(&self.key).expect("key length").encrypt(&nonce.into(), payload)
            }
            Aead::Aes256Gcm => {
                aes_gcm::Aes256Gcm::new_from_slice(&self.key).expect("key length").encrypt(&nonce.into(), payload)
            }
        };
        r.map_err(|_| OhttpError::Hpke("AES-GCM seal failed".into()))
    }

    fn open(&self, seq: u64, aad: &[u8], ct: &[u8]) -> Result<Vec<u8>> {
        let nonce = self.nonce_for(seq);
        let payload = Payload { msg: ct, aad };
        let r = match self.aead {
            Aead::Aes128Gcm => {
                aes_gcm::Aes128Gcm::new_from_slice(&self.key).expect("key length").decrypt(&nonce.into(), payload)
            }
            Aead::Aes256Gcm => {
                aes_gcm::Aes256Gcm::new_from_slice(&self.key).expect("key length").decrypt(&nonce.into(), payload)
            }
        };
        r.map_err(|_| OhttpError::Authentication)
    }

    /// The derived key and nonce (known-answer tests check them).
    #[cfg(test)]
    fn parts(&self) -> (&[u8], &[u8]) {
        (&self.key, &self.nonce)
    }
}

macro_rules! dispatch {
    ($self:expr, $ctx:ident => $body:expr) => {
        match $self {
            Self::A128($ctx) => $body,
            Self::A256($ctx) => $body,
        }
    };
}

enum SenderCtx {
    A128(hpke::aead::AeadCtxS<hpke::aead::AesGcm128, Kdf, Kem>),
    A256(hpke::aead::AeadCtxS<hpke::aead::AesGcm256, Kdf, Kem>),
}

impl SenderCtx {
    fn new(aead: Aead, pk: &<Kem as hpke::Kem>::PublicKey, info: &[u8]) -> Result<(Self, Vec<u8>)> {
        let err = |e: hpke::HpkeError| OhttpError::Hpke(e.to_string());
        Ok(match aead {
            Aead::Aes128Gcm => {
                let (enc, ctx) = hpke::setup_sender(&OpModeS::Base, pk, info).map_err(err)?;
                (SenderCtx::A128(ctx), enc.to_bytes().to_vec())
            }
            Aead::Aes256Gcm => {
                let (enc, ctx) = hpke::setup_sender(&OpModeS::Base, pk, info).map_err(err)?;
                (SenderCtx::A256(ctx), enc.to_bytes().to_vec())
            }
        })
    }

    fn seal(&mut self, pt: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        dispatch!(self, c => c.seal(pt, aad)).map_err(|e| OhttpError::Hpke(e.to_string()))
    }

    fn export(&self, label: &[u8], len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        dispatch!(self, c => c.export(label, &mut out)).map_err(|e| OhttpError::Hpke(e.to_string()))?;
        Ok(out)
    }
}

enum ReceiverCtx {
    A128(hpke::aead::AeadCtxR<hpke::aead::AesGcm128, Kdf, Kem>),
    A256(hpke::aead::AeadCtxR<hpke::aead::AesGcm256, Kdf, Kem>),
}

impl ReceiverCtx {
    fn new(
        aead: Aead,
        sk: &<Kem as hpke::Kem>::PrivateKey,
        enc: &<Kem as hpke::Kem>::EncappedKey,
        info: &[u8],
    ) -> Result<Self> {
        let err = |_| OhttpError::BadEncapsulatedKey;
        Ok(match aead {
            Aead::Aes128Gcm => ReceiverCtx::A128(hpke::setup_receiver(&OpModeR::Base, sk, enc, info).map_err(err)?),
            Aead::Aes256Gcm => ReceiverCtx::A256(hpke::setup_receiver(&OpModeR::Base, sk, enc, info).map_err(err)?),
        })
    }

    fn open(&mut self, ct: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        dispatch!(self, c => c.open(ct, aad)).map_err(|_| OhttpError::Authentication)
    }

    fn export(&self, label: &[u8], len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        dispatch!(self, c => c.export(label, &mut out)).map_err(|e| OhttpError::Hpke(e.to_string()))?;
        Ok(out)
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).expect("the operating system's random source failed");
    v
}

/// QUIC variable-length integer (RFC 9000 section 16), as Binary HTTP and chunked OHTTP use.
pub fn write_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        16384..=1_073_741_823 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A bounds-checked cursor: every read returns `None` rather than panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let first = *self.buf.first()?;
        let len = 1usize << (first >> 6);
        let bytes = self.take(len)?;
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = (v << 8) | u64::from(*b);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests;
