//! What the proxy says about itself: its account key and price terms, bound
//! into its own evidence so that clients can verify whom they pay.
//!
//! The terms are a JSON document served as exact bytes (`GET /v1/terms`);
//! the proxy's claims carry its account key as `receipt_key` and the terms'
//! SHA-256 as `config_digest`, and its evidence binds the claims like a
//! worker's does.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use cocoon_attestation::{AttestationError, EvidenceProducer, evidence_document};
use cocoon_protocol::evidence::CLAIMS_VERSION;
use cocoon_protocol::ohttp::{GatewayKey, KeyConfig};
use cocoon_protocol::price::ProxyTerms;
use cocoon_protocol::{Claims, Commission, NanoTon};

pub struct Identity {
    pub key: SigningKey,
    pub terms: ProxyTerms,
    pub terms_bytes: Vec<u8>,
    pub claims_bytes: Vec<u8>,
    producer: Arc<dyn EvidenceProducer>,
    /// Evidence without a nonce, made once at start.
    pub cached_evidence: Vec<u8>,
}

impl Identity {
    pub fn new(
        key: SigningKey,
        commission: Commission,
        credit_limit: NanoTon,
        producer: Arc<dyn EvidenceProducer>,
    ) -> Result<Self, AttestationError> {
        let terms = ProxyTerms {
            version: 1,
            account_key: hex::encode(key.verifying_key().to_bytes()),
            commission_ppm: commission.ppm(),
            credit_limit,
        };
        let terms_bytes = serde_json::to_vec(&terms).expect("terms encode");
        let claims = Claims {
            version: CLAIMS_VERSION,
            platform: producer.platform(),
            // Clients verify the proxy as they verify workers, and that verification
            // wants a key configuration: the proxy's own, for messages sealed to it.
            ohttp_keys: ByteBuf::from(KeyConfig::encode_list(std::slice::from_ref(GatewayKey::generate(1).config()))),
            receipt_key: ByteBuf::from(key.verifying_key().to_bytes().to_vec()),
            model: None,
            config_digest: ByteBuf::from(Sha256::digest(&terms_bytes).to_vec()),
            image_version: format!("cocoon-proxy {}", env!("CARGO_PKG_VERSION")),
            issued_at: cocoon_client::worker::unix_now(),
            prices: None,
            payout_address: None,
            capacity: None,
        };
        let mut id =
            Identity { key, terms, terms_bytes, claims_bytes: claims.encode(), producer, cached_evidence: Vec::new() };
        id.cached_evidence = id.evidence(None)?;
        Ok(id)
    }

    /// The proxy's evidence document, fresh for `nonce` when one is given.
    pub fn evidence(&self, nonce: Option<&[u8]>) -> Result<Vec<u8>, AttestationError> {
        evidence_document(self.producer.as_ref(), &self.claims_bytes, nonce)
    }
}
