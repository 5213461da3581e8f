//! The enclave's secrets and what it says about itself.

use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use cocoon_attestation::{AttestationError, EvidenceProducer, evidence_document};
use cocoon_engine::Engine;

use crate::fresh_evidence::{self, FreshEvidence};
use crate::model_config::WorkerTerms;
use crate::replay::{self, ReplayGuard};
use cocoon_protocol::evidence::CLAIMS_VERSION;
use cocoon_protocol::ohttp::{GatewayKey, KeyConfig};
use cocoon_protocol::{Claims, ModelClaim, ReceiptSigner};

pub struct EnclaveState {
    pub gateway: GatewayKey,
    pub receipts: ReceiptSigner,
    pub claims: Claims,
    pub key_configs: Vec<u8>,
    /// Evidence for the current key epoch, made once at start (no nonce).
    pub cached_evidence: Vec<u8>,
    pub engine: Option<Arc<dyn Engine>>,
    /// Batches verifiers' nonces into few hardware reports.
    pub fresh: Arc<FreshEvidence>,
    /// Refuses sealed requests it has seen, or dated outside its window.
    pub replay: ReplayGuard,
    /// Receipts of streams cut short, for the proxy to fetch.
    pub cancelled: crate::cancelled::CancelledReceipts,
    pub limits: ServeLimits,
}

/// The enclave's defences against load and replays (command-line flags).
#[derive(Debug, Clone)]
pub struct ServeLimits {
    pub replay_window: Duration,
    pub replay_capacity: usize,
    /// Shortest time between two hardware reports for fresh evidence.
    pub evidence_interval: Duration,
    pub max_evidence_waiting: usize,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            replay_window: replay::DEFAULT_WINDOW,
            replay_capacity: replay::DEFAULT_CAPACITY,
            evidence_interval: fresh_evidence::DEFAULT_MIN_INTERVAL,
            max_evidence_waiting: fresh_evidence::DEFAULT_MAX_WAITING,
            max_connections: 4096,
        }
    }
}

pub use cocoon_runtime::unix_now;

impl EnclaveState {
    /// Generates keys, builds claims and produces the cached evidence.
    pub fn new(
        producer: Arc<dyn EvidenceProducer>,
        engine: Option<Arc<dyn Engine>>,
        config_bytes: &[u8],
        terms: WorkerTerms,
        limits: ServeLimits,
    ) -> Result<Self, AttestationError> {
        let gateway = GatewayKey::generate(1);
        let receipts = ReceiptSigner::generate();
        let key_configs = KeyConfig::encode_list(std::slice::from_ref(gateway.config()));
        let claims = Claims {
            version: CLAIMS_VERSION,
            platform: producer.platform(),
            ohttp_keys: ByteBuf::from(key_configs.clone()),
            receipt_key: ByteBuf::from(receipts.public_key().to_vec()),
            model: engine
                .as_ref()
                .map(|e| ModelClaim { id: e.model().id.clone(), digest: ByteBuf::from(e.model().digest.to_vec()) }),
            config_digest: ByteBuf::from(Sha256::digest(config_bytes).to_vec()),
            image_version: env!("CARGO_PKG_VERSION").to_string(),
            issued_at: unix_now(),
            prices: terms.prices,
            payout_address: terms.payout_address,
            capacity: terms.capacity,
        };
        let claims_bytes = claims.encode();
        let cached_evidence = evidence_document(producer.as_ref(), &claims_bytes, None)?;
        Ok(EnclaveState {
            gateway,
            receipts,
            claims,
            key_configs,
            cached_evidence,
            engine,
            fresh: FreshEvidence::new(producer, &claims_bytes, limits.max_evidence_waiting, limits.evidence_interval),
            cancelled: Default::default(),
            replay: ReplayGuard::new(limits.replay_window, limits.replay_capacity),
            limits,
        })
    }
}
