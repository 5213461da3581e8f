//! Admitted workers: admission by attestation, periodic re-attestation,
//! health (a circuit breaker with recovery probes), and the pick by model,
//! load and reputation.
//!
//! An [`Attested`] is built only from evidence that passed the proxy's
//! policy; its receipt key, model digest and prices are the only ones the
//! proxy meters with.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use cocoon_attestation::{AttestationError, Policy, VerifiedWorker};
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_client::worker::{ClientError, fetch_verified};
use cocoon_protocol::proxy_api::{Market, ModelMarket, PricePoint, TypicalRequest, WorkerView};
use cocoon_protocol::{NanoTon, Platform, Prices};

use crate::config::{ProxyConfig, WorkerUrlError, check_worker_url, secs};
use crate::ledger::Ledger;
use crate::reputation::{Outcome, Reputation, ReputationConfig, price_term, routing_cost};
use cocoon_runtime::{LockExt, RwLockExt};

/// Longest wait between two probes of a worker that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Url(#[from] WorkerUrlError),
    #[error("fetching the worker's evidence: {0}")]
    Fetch(ClientError),
    #[error("the worker's evidence is refused: {0}")]
    Refused(AttestationError),
    #[error("the worker serves no model")]
    NoModel,
    #[error("the proxy admits at most {limit} workers")]
    Full { limit: usize },
    #[error("attesting the worker took longer than {0:?}")]
    Timeout(Duration),
    #[error("the worker is not allowed by the registry: {0}")]
    NotListed(cocoon_client::allowlist::AllowlistError),
}

/// What the proxy verified about a worker, from evidence that passed its
/// policy. A proof: built only by [`Attested::from_verified`] (so from a
/// `VerifiedWorker`), its fields private.
#[derive(Debug)]
pub struct Attested {
    /// The evidence document as the worker served it (clients verify it themselves).
    evidence: Bytes,
    claims_digest: [u8; 32],
    platform: Platform,
    receipt_key: [u8; 32],
    model_id: String,
    model_digest: [u8; 32],
    prices: Prices,
    payout_address: Option<String>,
    /// Requests the worker serves or queues at once.
    capacity: u32,
    /// The chips of its GPUs that verified and passed the policy (`GH100`...).
    gpus: Vec<String>,
    attested_at_ms: u64,
}

impl Attested {
    fn from_verified(evidence: Vec<u8>, v: VerifiedWorker) -> Result<Self, AdmissionError> {
        let claims = v.claims();
        let model = claims.model.clone().ok_or(AdmissionError::NoModel)?;
        Ok(Attested {
            claims_digest: Sha256::digest(claims.encode()).into(),
            evidence: Bytes::from(evidence),
            platform: v.platform(),
            receipt_key: *v.receipt_key(),
            model_id: model.id,
            model_digest: model.digest.as_slice().try_into().expect("length checked at decode"),
            prices: claims.prices.unwrap_or_default(),
            payout_address: claims.payout_address.clone(),
            capacity: claims.capacity.map(|c| c.requests()).unwrap_or(1),
            gpus: v.gpus().iter().map(|g| g.chip.clone()).collect(),
            attested_at_ms: now_ms(),
        })
    }
    /// The evidence document as the worker served it (clients verify it themselves).
    pub fn evidence(&self) -> &Bytes {
        &self.evidence
    }

    /// SHA-256 of the claims: it changes when the worker's keys do.
    pub fn claims_digest(&self) -> &[u8; 32] {
        &self.claims_digest
    }

    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The attested key the worker's receipts must verify under.
    pub fn receipt_key(&self) -> &[u8; 32] {
        &self.receipt_key
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn model_digest(&self) -> &[u8; 32] {
        &self.model_digest
    }

    /// The attested prices the proxy meters with.
    pub fn prices(&self) -> Prices {
        self.prices
    }

    pub fn payout_address(&self) -> Option<&str> {
        self.payout_address.as_deref()
    }

    /// Requests the worker serves or queues at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The chips of its GPUs that verified and passed the policy (`GH100`...).
    pub fn gpus(&self) -> &[String] {
        &self.gpus
    }

    pub fn attested_at_ms(&self) -> u64 {
        self.attested_at_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    Up,
    /// Excluded from routing until a probe succeeds; `until_ms` is the next probe.
    Down {
        until_ms: u64,
        failures: u32,
    },
    /// Its keys are probably no longer the attested ones: re-attest before use.
    Stale,
}

pub struct WorkerEntry {
    pub id: String,
    pub url: String,
    attested: RwLock<Arc<Attested>>,
    pub in_flight: AtomicU32,
    /// When the routes answered with this worker were, whose sealed request
    /// has not arrived yet: counted as load, so that a burst of routes spreads
    /// instead of every one picking the worker that looked idle.
    routed: Mutex<VecDeque<u64>>,
    health: Mutex<Health>,
    reputation: Mutex<Reputation>,
}

/// How long a route counts as load while its request has not arrived.
const ROUTED_TTL_MS: u64 = 10_000;
/// Most routes remembered per worker.
const MAX_ROUTED: usize = 1024;

impl WorkerEntry {
    /// A request of a route answered earlier arrived: it is in flight now.
    pub fn arrived(&self) {
        self.routed.locked().pop_front();
    }

    /// A route was answered with this worker: its request is coming.
    pub fn note_routed(&self, now_ms: u64) {
        let mut r = self.routed.locked();
        if r.len() >= MAX_ROUTED {
            r.pop_front();
        }
        r.push_back(now_ms);
    }

    /// Routes answered within the last `ROUTED_TTL_MS` whose request has not arrived.
    fn routed(&self, now_ms: u64) -> u32 {
        let mut r = self.routed.locked();
        while r.front().is_some_and(|&t| t + ROUTED_TTL_MS < now_ms) {
            r.pop_front();
        }
        r.len() as u32
    }

    pub fn attested(&self) -> Arc<Attested> {
        self.attested.read_locked().clone()
    }

    pub fn health(&self) -> Health {
        *self.health.locked()
    }

    pub fn reputation(&self, now_ms: u64, cfg: &ReputationConfig) -> Reputation {
        let mut r = self.reputation.locked();
        r.decay(now_ms, cfg);
        r.clone()
    }
}

/// The stable id of the worker at `url` (its reputation follows it across restarts).
pub fn worker_id(url: &str) -> String {
    format!("w-{}", &hex::encode(Sha256::digest(url.trim_end_matches('/').as_bytes()))[..12])
}

pub use cocoon_runtime::now_ms;

pub struct Registry {
    workers: RwLock<BTreeMap<String, Arc<WorkerEntry>>>,
    /// URLs the proxy keeps (re)admitting: its config's and those that joined.
    wanted: Mutex<BTreeSet<String>>,
    policy: Policy,
    sources: EndorsementSources,
    http: HttpClient,
    config: ProxyConfig,
    ledger: Arc<Ledger>,
    wake: Notify,
    /// The network's registry, when the proxy admits only what it lists.
    allowlist: Option<Arc<cocoon_client::allowlist::Watched>>,
}

/// What a route asks of a worker besides its model.
pub struct Want<'a> {
    /// Workers not to pick (they failed this request).
    pub exclude: &'a [String],
    /// GPU chips the client accepts (empty: any).
    pub gpus: &'a [String],
    /// The tokens the request may use, which workers are ranked by the cost of.
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The client's price ceiling.
    pub max_price: Option<Prices>,
}

/// One routing decision.
pub struct Pick {
    pub worker: Arc<WorkerEntry>,
    pub attested: Arc<Attested>,
    /// Other workers of the model still eligible, best first.
    pub alternatives: Vec<String>,
}

impl Registry {
    pub fn new(
        config: ProxyConfig,
        policy: Policy,
        sources: EndorsementSources,
        ledger: Arc<Ledger>,
        allowlist: Option<Arc<cocoon_client::allowlist::Watched>>,
    ) -> Arc<Self> {
        let wanted = config.workers.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Arc::new(Registry {
            workers: RwLock::new(BTreeMap::new()),
            wanted: Mutex::new(wanted),
            policy,
            sources,
            http: HttpClient::default(),
            config,
            ledger,
            wake: Notify::new(),
            allowlist,
        })
    }

    pub fn reputation_config(&self) -> &ReputationConfig {
        &self.config.reputation
    }

    /// Fetches fresh evidence (a new nonce) and verifies it under the proxy's policy.
    pub async fn attest(&self, url: &str) -> Result<Attested, AdmissionError> {
        let limit = secs(self.config.limits.attest_timeout_s);
        let work = async {
            // With a registry, the evidence must also match a listed image, and the model be listed.
            let listed = match &self.allowlist {
                Some(w) => Some(w.current().map_err(AdmissionError::NotListed)?),
                None => None,
            };
            let policy = match &listed {
                Some(l) => std::borrow::Cow::Owned(l.policy(&self.policy)),
                None => std::borrow::Cow::Borrowed(&self.policy),
            };
            let (evidence, verified) =
                fetch_verified(&self.http, url, &policy, &self.sources, true).await.map_err(|e| match e {
                    ClientError::Attestation(e) => AdmissionError::Refused(e),
                    other => AdmissionError::Fetch(other),
                })?;
            if let Some(l) = &listed {
                l.check_worker(&verified).map_err(AdmissionError::NotListed)?;
            }
            Attested::from_verified(evidence, verified)
        };
        tokio::time::timeout(limit, work).await.map_err(|_| AdmissionError::Timeout(limit))?
    }

    /// Attests the worker at `url` and admits it (or refreshes its attestation).
    pub async fn admit(&self, url: &str) -> Result<Arc<WorkerEntry>, AdmissionError> {
        check_worker_url(url)?;
        let url = url.trim_end_matches('/').to_string();
        let id = worker_id(&url);
        if !self.workers.read_locked().contains_key(&id)
            && self.workers.read_locked().len() >= self.config.limits.max_workers
        {
            return Err(AdmissionError::Full { limit: self.config.limits.max_workers });
        }
        let attested = Arc::new(self.attest(&url).await?);
        let mut workers = self.workers.write_locked();
        if let Some(existing) = workers.get(&id) {
            let before = existing.attested().claims_digest;
            if before != attested.claims_digest {
                info!(worker = %id, url = %url, "worker re-attested with new keys");
            }
            *existing.attested.write_locked() = attested;
            *existing.health.locked() = Health::Up;
            return Ok(existing.clone());
        }
        if workers.len() >= self.config.limits.max_workers {
            return Err(AdmissionError::Full { limit: self.config.limits.max_workers });
        }
        let reputation = self
            .ledger
            .load_reputation(&url)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<Reputation>(&j).ok())
            .unwrap_or_else(|| Reputation::new(now_ms()));
        info!(worker = %id, url = %url, model = %attested.model_id, platform = %attested.platform, "worker admitted");
        let entry = Arc::new(WorkerEntry {
            id: id.clone(),
            url: url.clone(),
            attested: RwLock::new(attested),
            in_flight: AtomicU32::new(0),
            routed: Mutex::new(VecDeque::new()),
            health: Mutex::new(Health::Up),
            reputation: Mutex::new(reputation),
        });
        workers.insert(id, entry.clone());
        drop(workers);
        self.wanted.locked().insert(url);
        Ok(entry)
    }

    pub fn evict(&self, id: &str, reason: &str) {
        if let Some(w) = self.workers.write_locked().remove(id) {
            warn!(worker = %id, url = %w.url, "worker evicted: {reason}");
            self.persist_one(&w);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<WorkerEntry>> {
        self.workers.read_locked().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<WorkerEntry>> {
        self.workers.read_locked().values().cloned().collect()
    }

    /// The request `GET /v1/market` quotes, and the one routes are ranked
    /// for when the client does not say.
    pub fn typical_request(&self) -> TypicalRequest {
        let r = &self.config.routing;
        TypicalRequest { prompt_tokens: r.typical_prompt_tokens, completion_tokens: r.typical_completion_tokens }
    }

    /// Workers that could take a request of `model`: up, not quarantined,
    /// not excluded, of the wanted GPU chips; with room and within the price
    /// ceiling when `now` (else whatever their load and prices).
    fn eligible(&self, model: &str, want: &Want, now: bool) -> Vec<Candidate> {
        let at = now_ms();
        let cfg = &self.config.reputation;
        self.all()
            .into_iter()
            .filter(|w| !want.exclude.contains(&w.id) && w.health() == Health::Up)
            .filter_map(|w| {
                let a = w.attested();
                if a.model_id != model || !gpu_class_matches(&a.gpus, want.gpus) {
                    return None;
                }
                if now && want.max_price.is_some_and(|c| !a.prices.within(&c)) {
                    return None;
                }
                let reputation = w.reputation(at, cfg);
                let in_flight = w.in_flight.load(Ordering::Relaxed);
                if reputation.quarantined(at) || (now && in_flight >= a.capacity) {
                    return None;
                }
                let expected = a.prices.cost(want.prompt_tokens, want.completion_tokens);
                // Routes not yet followed by their request weigh as load, but never
                // fill a worker: anyone may ask for routes.
                let load = (in_flight + w.routed(at)).min(a.capacity.saturating_sub(1).max(in_flight));
                Some(Candidate { worker: w, attested: a, reputation, in_flight: load, expected })
            })
            .collect()
    }

    /// The best worker for `model` under `want` (see `reputation` for the cost).
    pub fn pick(&self, model: &str, want: &Want) -> Option<Pick> {
        let candidates = self.eligible(model, want, true);
        let cheapest = candidates.iter().map(|c| c.expected).min()?;
        let weight = self.config.routing.price_weight;
        let mut ranked: Vec<(f64, Candidate)> = candidates
            .into_iter()
            .map(|c| {
                // A little jitter spreads equal workers instead of always picking the
                // first; the added term breaks ties between costs of 0 (workers still
                // being explored), which no factor can.
                let jitter = 1.0 + (random_u32() % 1000) as f64 / 100_000.0;
                let tie = (random_u32() % 1000) as f64 * 1e-12;
                let price = price_term(c.expected, cheapest, weight);
                (routing_cost(c.in_flight, c.attested.capacity, &c.reputation, price) * jitter + tie, c)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut it = ranked.into_iter();
        let (_, best) = it.next()?;
        Some(Pick {
            worker: best.worker,
            attested: best.attested,
            alternatives: it.map(|(_, c)| c.worker.id.clone()).collect(),
        })
    }

    /// When every worker that could serve the request charges more than
    /// the client's ceiling (so waiting for capacity would not help): the
    /// lowest of their prices, which the refusal names.
    pub fn cheapest_above_ceiling(&self, model: &str, want: &Want) -> Option<Prices> {
        let ceiling = want.max_price?;
        let all = self.eligible(model, want, false);
        if all.iter().any(|c| c.attested.prices.within(&ceiling)) {
            return None;
        }
        all.into_iter().min_by_key(|c| c.expected).map(|c| c.attested.prices)
    }

    /// What the workers that are up charge, per model: the lowest, median and
    /// highest price (ordered by the typical request's cost) with the
    /// capacity and load at each.
    pub fn market(&self) -> Market {
        let typical = self.typical_request();
        let now = now_ms();
        let mut by_model: BTreeMap<String, Vec<(NanoTon, Prices, u32, u32)>> = BTreeMap::new();
        for w in self.all() {
            if w.health() != Health::Up || w.reputation(now, &self.config.reputation).quarantined(now) {
                continue;
            }
            let a = w.attested();
            let cost = a.prices.cost(typical.prompt_tokens, typical.completion_tokens);
            let in_flight = w.in_flight.load(Ordering::Relaxed);
            by_model.entry(a.model_id.clone()).or_default().push((cost, a.prices, a.capacity, in_flight));
        }
        let models = by_model
            .into_iter()
            .map(|(model, mut workers)| {
                workers.sort_by_key(|&(cost, p, ..)| (cost, p.prompt_per_1k, p.completion_per_1k));
                let point = |prices: Prices| {
                    let at: Vec<_> = workers.iter().filter(|w| w.1 == prices).collect();
                    PricePoint {
                        prices,
                        typical_cost: at[0].0,
                        workers: at.len() as u32,
                        capacity: at.iter().map(|w| w.2).sum(),
                        in_flight: at.iter().map(|w| w.3).sum(),
                    }
                };
                let median = workers[(workers.len() - 1) / 2].1;
                ModelMarket {
                    model,
                    workers: workers.len() as u32,
                    capacity: workers.iter().map(|w| w.2).sum(),
                    in_flight: workers.iter().map(|w| w.3).sum(),
                    lowest: point(workers[0].1),
                    median: point(median),
                    highest: point(workers[workers.len() - 1].1),
                }
            })
            .collect();
        Market { typical_request: typical, models }
    }

    /// Models served by admitted workers.
    pub fn models(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.all().iter().map(|w| w.attested().model_id.clone()).collect();
        set.into_iter().collect()
    }

    pub fn record(&self, w: &WorkerEntry, outcome: Outcome) {
        w.reputation.locked().record(outcome, now_ms(), &self.config.reputation);
    }

    /// The worker failed before its first byte: out of routing until a probe succeeds.
    pub fn mark_down(&self, w: &WorkerEntry) {
        let mut h = w.health.locked();
        let failures = match *h {
            Health::Down { failures, .. } => failures + 1,
            _ => 1,
        };
        let backoff = (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8))).min(MAX_BACKOFF);
        *h = Health::Down { until_ms: now_ms() + backoff.as_millis() as u64, failures };
        self.wake.notify_one();
    }

    /// Every worker is re-attested at once (the registry changed): those it no
    /// longer allows are evicted on the spot.
    pub fn recheck_all(&self, why: &str) {
        info!("{why}: re-attesting every worker");
        for w in self.all() {
            *w.health.locked() = Health::Stale;
        }
        self.wake.notify_one();
    }

    /// The worker could not open a request sealed to its attested keys: re-attest it now.
    pub fn mark_stale(&self, w: &WorkerEntry) {
        *w.health.locked() = Health::Stale;
        self.wake.notify_one();
    }

    /// Admits the configured workers, then keeps every worker attested: a full
    /// re-attestation each interval, probes of workers that are down, at once
    /// for stale ones; a worker whose evidence stops passing is evicted.
    pub async fn maintain(self: Arc<Self>) {
        let interval = secs(self.config.reattest_interval_s);
        let mut last_full = std::time::Instant::now();
        let mut first = true;
        loop {
            let full = first || last_full.elapsed() >= interval;
            if full {
                last_full = std::time::Instant::now();
            }
            first = false;
            let now = now_ms();
            let mut due: Vec<String> = Vec::new();
            let admitted: BTreeMap<String, Arc<WorkerEntry>> =
                self.all().into_iter().map(|w| (w.url.clone(), w)).collect();
            for url in self.wanted.locked().iter() {
                match admitted.get(url) {
                    None => {
                        if full {
                            due.push(url.clone())
                        }
                    }
                    Some(w) => match w.health() {
                        Health::Stale => due.push(url.clone()),
                        Health::Down { until_ms, .. } if until_ms <= now => due.push(url.clone()),
                        Health::Down { .. } => {}
                        Health::Up if full => due.push(url.clone()),
                        Health::Up => {}
                    },
                }
            }
            let jobs = due.into_iter().map(|url| {
                let reg = self.clone();
                async move {
                    match reg.admit(&url).await {
                        Ok(_) => {}
                        Err(AdmissionError::Refused(e)) => {
                            reg.evict(&worker_id(&url), &format!("re-attestation refused: {e}"));
                        }
                        Err(AdmissionError::NoModel) => reg.evict(&worker_id(&url), "it serves no model"),
                        Err(AdmissionError::NotListed(e)) => {
                            reg.evict(&worker_id(&url), &format!("not allowed by the registry: {e}"))
                        }
                        Err(e) => {
                            if let Some(w) = reg.get(&worker_id(&url)) {
                                warn!(worker = %w.id, "probe failed: {e}");
                                reg.mark_down(&w);
                            }
                        }
                    }
                }
            });
            let handles: Vec<_> = jobs.map(tokio::spawn).collect();
            for h in handles {
                let _ = h.await;
            }
            if full {
                self.persist();
            }
            let _ = tokio::time::timeout(Duration::from_millis(200).min(interval), self.wake.notified()).await;
        }
    }

    fn persist_one(&self, w: &WorkerEntry) {
        let rep = w.reputation.locked().clone();
        if let Ok(json) = serde_json::to_string(&rep)
            && let Err(e) = self.ledger.save_reputation(&[(w.url.clone(), json)])
        {
            warn!("saving reputation: {e}");
        }
    }

    /// Saves every worker's reputation (it survives restarts).
    pub fn persist(&self) {
        let rows: Vec<(String, String)> = self
            .all()
            .iter()
            .filter_map(|w| {
                let rep = w.reputation.locked().clone();
                serde_json::to_string(&rep).ok().map(|j| (w.url.clone(), j))
            })
            .collect();
        if let Err(e) = self.ledger.save_reputation(&rows) {
            warn!("saving reputation: {e}");
        }
    }

    /// The public view of one worker (`GET /v1/workers`).
    pub fn describe(&self, w: &WorkerEntry) -> WorkerView {
        let now = now_ms();
        let a = w.attested();
        let rep = w.reputation(now, &self.config.reputation);
        let health = match w.health() {
            Health::Up if rep.quarantined(now) => "quarantined",
            Health::Up => "up",
            Health::Down { .. } => "down",
            Health::Stale => "re-attesting",
        };
        WorkerView {
            id: w.id.clone(),
            url: w.url.clone(),
            model: a.model_id.clone(),
            model_digest: hex::encode(a.model_digest),
            platform: a.platform.as_str().into(),
            prices: a.prices,
            payout_address: a.payout_address.clone(),
            capacity: a.capacity,
            gpus: a.gpus.clone(),
            in_flight: w.in_flight.load(Ordering::Relaxed),
            state: health.into(),
            reputation: serde_json::to_value(&rep).unwrap_or_default(),
            evidence_age_s: now.saturating_sub(a.attested_at_ms) / 1000,
            evidence_sha256: hex::encode(Sha256::digest(&a.evidence)),
        }
    }
}

/// Whether a worker's verified GPU chips meet a request for `wanted` (any
/// worker when nothing is wanted; else at least one GPU, each of a wanted chip).
/// A worker that could take a request, with what it would cost there.
struct Candidate {
    worker: Arc<WorkerEntry>,
    attested: Arc<Attested>,
    reputation: Reputation,
    in_flight: u32,
    expected: NanoTon,
}

pub fn gpu_class_matches(have: &[String], wanted: &[String]) -> bool {
    wanted.is_empty() || (!have.is_empty() && have.iter().all(|h| wanted.iter().any(|w| w.eq_ignore_ascii_case(h))))
}

pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_classes_route_only_to_workers_whose_every_verified_gpu_is_wanted() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(gpu_class_matches(&s(&[]), &s(&[])));
        assert!(gpu_class_matches(&s(&["GH100"]), &s(&[])));
        assert!(gpu_class_matches(&s(&["GH100", "GH100"]), &s(&["gh100", "GB100"])));
        assert!(!gpu_class_matches(&s(&[]), &s(&["GH100"])), "no verified GPU");
        assert!(!gpu_class_matches(&s(&["GH100", "GB202"]), &s(&["GH100"])), "one GPU of another chip");
        assert!(!gpu_class_matches(&s(&["GB100"]), &s(&["GH100"])));
    }

    #[test]
    fn worker_urls_are_checked_and_ids_are_stable() {
        assert!(check_worker_url("http://127.0.0.1:8080").is_ok());
        for bad in ["ftp://x", "not a url", "http://x/?a=b", "file:///etc/passwd"] {
            assert!(check_worker_url(bad).is_err(), "{bad}");
        }
        assert!(check_worker_url(&format!("http://{}", "a".repeat(600))).is_err());
        assert_eq!(worker_id("http://a:1/"), worker_id("http://a:1"));
        assert_ne!(worker_id("http://a:1"), worker_id("http://a:2"));
    }
}
