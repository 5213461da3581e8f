//! Fresh evidence for many verifiers from few hardware reports.
//!
//! A hardware quote takes tens of milliseconds and the hardware serves one at
//! a time. Verifiers asking for fresh evidence are queued; one task takes
//! every nonce waiting, has the hardware sign the root of a Merkle tree over
//! them, and answers each verifier with the audit path of its own nonce.
//! Reports are made at most one per `min_interval` on average (with a burst
//! of four, so that an idle worker answers at once), so a thousand verifiers
//! a second cost a few reports a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify, oneshot};
use tokio::time::Instant;
use tracing::warn;

use cocoon_attestation::{EvidenceProducer, batched_evidence_documents};

/// Verifiers that may wait for fresh evidence at once; more are answered busy.
pub const DEFAULT_MAX_WAITING: usize = 8192;
/// Shortest time between two hardware reports.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum FreshEvidenceError {
    #[error("evidence producer busy: {0} verifiers are waiting for fresh evidence already")]
    Busy(usize),
    #[error("evidence: {0}")]
    Producer(String),
}

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

pub struct FreshEvidence {
    producer: Arc<dyn EvidenceProducer>,
    claims: Arc<[u8]>,
    waiting: Mutex<Vec<(Vec<u8>, Reply)>>,
    wake: Notify,
    max_waiting: usize,
    min_interval: Duration,
    reports: AtomicU64,
    answered: AtomicU64,
}

impl FreshEvidence {
    pub fn new(
        producer: Arc<dyn EvidenceProducer>,
        claims: &[u8],
        max_waiting: usize,
        min_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(FreshEvidence {
            producer,
            claims: claims.into(),
            waiting: Mutex::new(Vec::new()),
            wake: Notify::new(),
            max_waiting: max_waiting.max(1),
            min_interval,
            reports: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        })
    }

    /// The evidence document for `nonce`, once the next batch is signed.
    pub async fn request(&self, nonce: Vec<u8>) -> Result<Vec<u8>, FreshEvidenceError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiting.lock().await;
            if w.len() >= self.max_waiting {
                return Err(FreshEvidenceError::Busy(w.len()));
            }
            w.push((nonce, tx));
        }
        self.wake.notify_one();
        match rx.await {
            Ok(r) => r.map_err(FreshEvidenceError::Producer),
            Err(_) => Err(FreshEvidenceError::Producer("the evidence task stopped".into())),
        }
    }

    /// Hardware reports made so far, and verifiers answered with them.
    pub fn counts(&self) -> (u64, u64) {
        (self.reports.load(Ordering::Relaxed), self.answered.load(Ordering::Relaxed))
    }

    /// Makes reports for waiting verifiers until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut bucket = ReportBucket::new(self.min_interval);
        loop {
            self.wake.notified().await;
            bucket.take().await;
            let batch = std::mem::take(&mut *self.waiting.lock().await);
            if batch.is_empty() {
                continue;
            }
            let (nonces, replies): (Vec<Vec<u8>>, Vec<Reply>) = batch.into_iter().unzip();
            let (producer, claims) = (self.producer.clone(), self.claims.clone());
            let made = tokio::task::spawn_blocking(move || batched_evidence_documents(&*producer, &claims, &nonces))
                .await
                .map_err(|e| format!("evidence task failed: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            match made {
                Ok(docs) => {
                    self.reports.fetch_add(1, Ordering::Relaxed);
                    self.answered.fetch_add(docs.len() as u64, Ordering::Relaxed);
                    for (reply, doc) in replies.into_iter().zip(docs) {
                        let _ = reply.send(Ok(doc));
                    }
                }
                Err(e) => {
                    warn!("fresh evidence for {} verifiers failed: {e}", replies.len());
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            // Verifiers that arrived while the hardware worked are the next batch.
            if !self.waiting.lock().await.is_empty() {
                self.wake.notify_one();
            }
        }
    }
}

/// Reports allowed: one per `interval` on average, with a small burst so that
/// a verifier arriving at an idle worker is answered at once.
struct ReportBucket {
    interval: Duration,
    tokens: f64,
    last: Instant,
}

/// Reports an idle worker may make back to back.
const REPORT_BURST: f64 = 4.0;

impl ReportBucket {
    fn new(interval: Duration) -> Self {
        ReportBucket { interval, tokens: REPORT_BURST, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        if self.interval.is_zero() {
            self.tokens = REPORT_BURST;
        } else {
            let earned = now.duration_since(self.last).as_secs_f64() / self.interval.as_secs_f64();
            self.tokens = (self.tokens + earned).min(REPORT_BURST);
        }
        self.last = now;
    }

    /// Waits until a report is allowed, and spends it.
    async fn take(&mut self) {
        self.refill();
        if self.tokens < 1.0 {
            tokio::time::sleep(self.interval.mul_f64(1.0 - self.tokens)).await;
            self.refill();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_attestation::simulated::SimulatedProducer;
    use cocoon_attestation::{Endorsements, Policy, verify_evidence};

    fn sample_claims() -> Vec<u8> {
        let key = cocoon_protocol::ohttp::GatewayKey::generate(1);
        cocoon_protocol::Claims {
            version: cocoon_protocol::evidence::CLAIMS_VERSION,
            platform: cocoon_protocol::Platform::Simulated,
            ohttp_keys: serde_bytes::ByteBuf::from(cocoon_protocol::ohttp::KeyConfig::encode_list(&[key
                .config()
                .clone()])),
            receipt_key: serde_bytes::ByteBuf::from(vec![2; 32]),
            model: None,
            config_digest: serde_bytes::ByteBuf::from(vec![3; 32]),
            image_version: "t".into(),
            issued_at: 1_800_000_000,
            prices: None,
            payout_address: None,
            capacity: None,
        }
        .encode()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_verifiers_share_few_reports_and_each_gets_its_own_proof() {
        let claims = sample_claims();
        let fresh = FreshEvidence::new(Arc::new(SimulatedProducer::new()), &claims, 4096, Duration::from_millis(50));
        tokio::spawn(fresh.clone().run());
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let f = fresh.clone();
            tasks.push(tokio::spawn(async move {
                let nonce = i.to_be_bytes().repeat(8);
                (nonce.clone(), f.request(nonce).await.unwrap())
            }));
        }
        let dev = Policy::insecure_simulated();
        let issued = cocoon_protocol::Claims::decode(&claims).unwrap().issued_at;
        let mut docs = Vec::new();
        for t in tasks {
            let (nonce, doc) = t.await.unwrap();
            verify_evidence(&doc, &dev, Some(&nonce), issued, &Endorsements::default()).unwrap();
            docs.push((nonce, doc));
        }
        // A document answers its own nonce only.
        let (n0, _) = &docs[0];
        assert!(verify_evidence(&docs[1].1, &dev, Some(n0), issued, &Endorsements::default()).is_err());
        let (reports, answered) = fresh.counts();
        assert_eq!(answered, 1000);
        assert!(reports <= 20, "{reports} hardware reports for 1000 verifiers");
    }
}
