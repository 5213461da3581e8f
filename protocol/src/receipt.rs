//! Usage receipts: COSE_Sign1 (RFC 9052) with EdDSA over Ed25519.
//!
//! A receipt travels outside the sealed response so that a proxy can pay for
//! verified work without seeing content: it names the sealed request by hash,
//! the model, and the token counts.

use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::cbor;
use crate::limits;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// SHA-256 of the sealed request bytes exactly as they crossed the network.
    pub request_hash: ByteBuf,
    pub model_id: String,
    pub model_digest: Option<ByteBuf>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The most the answer was allowed to cost at the worker's prices: the
    /// smaller of the sealed cap (the client's) and the outer cap (the
    /// proxy's), as the enclave applied it; `None` when neither was given.
    pub cost_cap: Option<crate::NanoTon>,
    /// Unix time in seconds.
    pub issued_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt of {found} bytes exceeds the limit of {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("receipt is not a tagged COSE_Sign1: {0}")]
    Malformed(String),
    #[error("receipt algorithm is {found}, expected EdDSA")]
    Algorithm { found: String },
    #[error("receipt signature does not verify under the enclave's receipt key")]
    Signature,
    #[error("receipt payload: {0}")]
    Payload(String),
    #[error("receipt is for request {found}, expected {expected}")]
    WrongRequest { expected: String, found: String },
}

pub struct ReceiptSigner {
    key: SigningKey,
}

impl ReceiptSigner {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        ReceiptSigner { key: SigningKey::from_bytes(&seed) }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign(&self, receipt: &Receipt) -> Vec<u8> {
        let protected = HeaderBuilder::new().algorithm(iana::Algorithm::EdDSA).build();
        CoseSign1Builder::new()
            .protected(protected)
            .payload(cbor::to_canonical_vec(receipt))
            .create_signature(b"", |tbs| self.key.sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .expect("COSE_Sign1 encodes")
    }
}

/// A receipt whose signature verified under the key it was checked with. A
/// proof: only [`Receipt::verify`] builds one; it reads as the [`Receipt`]
/// it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    receipt: Receipt,
}

impl std::ops::Deref for VerifiedReceipt {
    type Target = Receipt;
    fn deref(&self) -> &Receipt {
        &self.receipt
    }
}

impl VerifiedReceipt {
    /// The receipt, no longer a proof (to store or print it).
    pub fn into_inner(self) -> Receipt {
        self.receipt
    }
}

impl PartialEq<Receipt> for VerifiedReceipt {
    fn eq(&self, other: &Receipt) -> bool {
        &self.receipt == other
    }
}

impl Receipt {
    /// Verifies a COSE_Sign1 receipt under `public_key` and returns its payload.
    pub fn verify(bytes: &[u8], public_key: &[u8; 32]) -> Result<VerifiedReceipt, ReceiptError> {
        if bytes.len() > limits::MAX_RECEIPT {
            return Err(ReceiptError::TooLarge { found: bytes.len(), limit: limits::MAX_RECEIPT });
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        let alg = &sign1.protected.header.alg;
        if *alg != Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA)) {
            return Err(ReceiptError::Algorithm { found: format!("{alg:?}") });
        }
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| ReceiptError::Signature)?;
        sign1
            .verify_signature(b"", |sig, tbs| {
                let sig = Signature::from_slice(sig).map_err(|_| ())?;
                key.verify(tbs, &sig).map_err(|_| ())
            })
            .map_err(|()| ReceiptError::Signature)?;
        let payload = sign1.payload.as_deref().ok_or_else(|| ReceiptError::Payload("missing".into()))?;
        let receipt = cbor::from_slice(payload, limits::MAX_RECEIPT, "receipt")
            .map_err(|e| ReceiptError::Payload(e.to_string()))?;
        Ok(VerifiedReceipt { receipt })
    }

    /// Checks that the receipt names the sealed request the caller sent.
    pub fn expect_request(&self, request_hash: &[u8; 32]) -> Result<(), ReceiptError> {
        if self.request_hash.as_slice() != request_hash {
            return Err(ReceiptError::WrongRequest {
                expected: hex::encode(request_hash),
                found: hex::encode(&self.request_hash),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            request_hash: ByteBuf::from(vec![3; 32]),
            model_id: "m".into(),
            model_digest: None,
            prompt_tokens: 5,
            completion_tokens: 7,
            cost_cap: Some(crate::NanoTon(90)),
            issued_at: 1,
        }
    }

    #[test]
    fn sign_and_verify() {
        let s = ReceiptSigner::generate();
        let bytes = s.sign(&receipt());
        assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1 (tag 18)");
        assert_eq!(Receipt::verify(&bytes, &s.public_key()).unwrap(), receipt());
        receipt().expect_request(&[3; 32]).unwrap();
        assert!(receipt().expect_request(&[4; 32]).is_err());
    }

    #[test]
    fn wrong_key_and_tampering_rejected() {
        let s = ReceiptSigner::generate();
        let bytes = s.sign(&receipt());
        let other = ReceiptSigner::generate();
        assert_eq!(Receipt::verify(&bytes, &other.public_key()), Err(ReceiptError::Signature));
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 1;
            assert!(Receipt::verify(&t, &s.public_key()).is_err(), "flip at {i} accepted");
        }
    }
}
