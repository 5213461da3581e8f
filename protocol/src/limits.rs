//! Hard size limits. Every parser of outside input checks one of these
//! before it allocates or decodes.

/// Largest sealed request body the enclave accepts (and the host forwards by default).
pub const MAX_SEALED_REQUEST: usize = 1 << 20;
/// Largest plaintext (Binary HTTP) request inside the seal.
pub const MAX_INNER_REQUEST: usize = MAX_SEALED_REQUEST - 256;
/// Largest non-streamed sealed response.
pub const MAX_SEALED_RESPONSE: usize = 8 << 20;
/// Largest plaintext carried by one chunk of a chunked OHTTP message.
pub const MAX_CHUNK_PLAINTEXT: usize = 16 << 10;
/// Largest ciphertext of one chunk a reader accepts (plaintext plus the AEAD tag,
/// with room for peers that use larger chunks than ours).
pub const MAX_CHUNK_CIPHERTEXT: usize = 64 << 10;
/// Largest total plaintext of a streamed response a client accepts.
pub const MAX_STREAMED_RESPONSE: usize = 64 << 20;
/// Largest `application/ohttp-keys` document.
pub const MAX_KEY_CONFIGS: usize = 4 << 10;
/// Largest evidence document (CBOR), including quote, certificates and event log.
pub const MAX_EVIDENCE: usize = 256 << 10;
/// Largest claims document (CBOR).
pub const MAX_CLAIMS: usize = 16 << 10;
/// Largest verifier nonce.
pub const MAX_NONCE: usize = 64;
/// Largest encoded receipt (COSE_Sign1).
pub const MAX_RECEIPT: usize = 2 << 10;
/// Longest text field inside claims (model id, image version, ...).
pub const MAX_CLAIM_TEXT: usize = 256;
/// Most GPU evidence entries in one evidence document.
pub const MAX_GPUS: usize = 16;
/// Most certificates in one evidence document.
pub const MAX_EVIDENCE_CERTS: usize = 16;

/// Longest OpenAI `prompt_cache_key` a worker accepts, and an app may give
/// `cocoon serve` (which sends its own 64-hex-digit key bound to it).
pub const MAX_PROMPT_CACHE_KEY: usize = 256;

/// Completion tokens a worker grants when a request does not say (`max_tokens`
/// absent). The client runner reserves for this many when the app gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Completion tokens a worker grants at most, whatever a request asks.
pub const MAX_TOKENS_CAP: u32 = 4096;
