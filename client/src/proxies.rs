//! The proxies a runner routes through. Each is verified on its own (its
//! evidence passes the client's policy and binds the terms it serves), each
//! is paid through its own channel, and for every request they are tried in
//! order: the lowest commission first, then the lowest measured latency, ties
//! spread at random. A proxy that cannot be reached, answers 5xx, does not
//! answer in time, or breaks an answer off before the app saw any of it is
//! set aside for a while (longer after each failure in a row) and the
//! request goes to the next; an answer the app has begun to read is never
//! sent again.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use cocoon_attestation::Policy;
use cocoon_protocol::Commission;
use cocoon_protocol::price::ProxyTerms;
use cocoon_runtime::{LockExt, RwLockExt};
use cocoon_ton::TonAddress;

use crate::endorsements::EndorsementSources;
use crate::http::{HttpClient, join};
use crate::pay::ChannelPayer;
use crate::worker::{ClientError, fetch_verified};

/// How long a proxy stays aside after its first failure; doubled for each
/// further failure in a row, up to [`MAX_ASIDE`].
const FIRST_ASIDE: Duration = Duration::from_secs(1);
const MAX_ASIDE: Duration = Duration::from_secs(30);
/// Latencies rank in bands that double in width from this one (0-5 ms,
/// 5-15 ms, 15-35 ms, ...): noise within a band is not a preference.
const LATENCY_BAND_MS: f64 = 5.0;
/// A latency measured longer ago than this is forgotten, so that a proxy
/// that once answered slowly (and so got no traffic since) is tried again.
const LATENCY_MEMORY: Duration = Duration::from_secs(10);
/// Weight of a new latency sample in the running average.
const LATENCY_ALPHA: f64 = 0.2;

/// One proxy, verified: its URL, terms, account and channel, and how it has
/// answered lately.
pub struct ProxyLink {
    url: String,
    commission: Commission,
    account: [u8; 32],
    wallet: TonAddress,
    payer: OnceLock<ChannelPayer>,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    /// Running average of the time to a route answer, and when it was last measured.
    latency: Option<(f64, Instant)>,
    /// Failures in a row.
    failures: u32,
    /// Set aside until then.
    aside_until: Option<Instant>,
}

impl ProxyLink {
    /// Fetches the proxy's terms and its evidence; the evidence must pass
    /// `policy` and bind exactly these terms and the account key they name.
    pub async fn verify(
        http: &HttpClient,
        url: &str,
        policy: &Policy,
        sources: &EndorsementSources,
    ) -> Result<ProxyLink, ClientError> {
        let (status, terms_bytes) = http.get(join(url, "/v1/terms")?, 16 << 10).await?;
        if !status.is_success() {
            return Err(ClientError::Status { what: "proxy terms", status: status.as_u16(), body: String::new() });
        }
        let terms: ProxyTerms = serde_json::from_slice(&terms_bytes)
            .map_err(|e| ClientError::Answer { what: "the proxy's terms", reason: e.to_string() })?;
        let (_, verified) = fetch_verified(http, url, policy, sources, true).await?;
        let digest: [u8; 32] = Sha256::digest(&terms_bytes).into();
        if verified.claims().config_digest.as_slice() != digest {
            return Err(ClientError::TermsNotBound);
        }
        if hex::encode(verified.receipt_key()) != terms.account_key {
            return Err(ClientError::TermsAccount {
                terms: terms.account_key.clone(),
                evidence: hex::encode(verified.receipt_key()),
            });
        }
        let commission = terms.commission()?;
        let account = *verified.receipt_key();
        let wallet = cocoon_ton::wallet::address_of(&account)?;
        info!(proxy = url, commission_ppm = commission.ppm(), account = %terms.account_key, "proxy verified");
        Ok(ProxyLink {
            url: url.trim_end_matches('/').to_string(),
            commission,
            account,
            wallet,
            payer: OnceLock::new(),
            health: Mutex::new(Health::default()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn commission(&self) -> Commission {
        self.commission
    }

    /// The proxy's account key, attested.
    pub fn account(&self) -> &[u8; 32] {
        &self.account
    }

    /// The wallet of the attested account key: what a channel to this proxy pays.
    pub fn wallet(&self) -> &TonAddress {
        &self.wallet
    }

    /// The channel this proxy is paid through, once there is one.
    pub fn payer(&self) -> Option<&ChannelPayer> {
        self.payer.get()
    }

    /// Pays this proxy through `payer` from now on; refused when the channel
    /// pays another wallet or the proxy already has a channel.
    pub fn set_payer(&self, payer: ChannelPayer) -> Result<(), ClientError> {
        if payer.params().payee != self.wallet {
            return Err(ClientError::ChannelFile {
                path: payer.path().display().to_string(),
                reason: format!(
                    "it pays {}, but the proxy at {} has the wallet {}",
                    payer.params().payee,
                    self.url,
                    self.wallet
                ),
            });
        }
        let path = payer.path().display().to_string();
        self.payer.set(payer).map_err(|_| ClientError::ChannelFile {
            path,
            reason: format!("the proxy at {} is already paid through another channel", self.url),
        })
    }

    /// It answered; `latency` is how long its route answer took.
    pub fn succeeded(&self, latency: Duration) {
        let mut h = self.health.locked();
        let ms = latency.as_secs_f64() * 1000.0;
        let now = Instant::now();
        h.latency = Some(match h.latency {
            Some((avg, at)) if now.duration_since(at) < LATENCY_MEMORY => (avg + LATENCY_ALPHA * (ms - avg), now),
            _ => (ms, now),
        });
        h.failures = 0;
        h.aside_until = None;
    }

    /// It failed a request before the app saw anything: set aside for a while.
    pub fn failed(&self, why: &str) {
        let mut h = self.health.locked();
        h.failures = h.failures.saturating_add(1);
        let aside = FIRST_ASIDE.saturating_mul(1 << (h.failures - 1).min(8)).min(MAX_ASIDE);
        h.aside_until = Some(Instant::now() + aside);
        warn!(proxy = %self.url, failures = h.failures, "proxy set aside for {aside:?}: {why}");
    }

    fn is_aside(&self, now: Instant) -> bool {
        self.health.locked().aside_until.is_some_and(|t| t > now)
    }

    fn latency_band(&self, now: Instant) -> u64 {
        match self.health.locked().latency {
            Some((ms, at)) if now.duration_since(at) < LATENCY_MEMORY => (ms / LATENCY_BAND_MS + 1.0).log2() as u64,
            _ => 0,
        }
    }
}

/// The proxies a runner uses now: those verified at start, and those
/// verified later (down at start, or newly listed).
#[derive(Default)]
pub struct ProxySet {
    links: std::sync::RwLock<Vec<Arc<ProxyLink>>>,
}

impl ProxySet {
    pub fn new(links: Vec<Arc<ProxyLink>>) -> Self {
        ProxySet { links: std::sync::RwLock::new(links) }
    }

    pub fn snapshot(&self) -> Vec<Arc<ProxyLink>> {
        self.links.read_locked().clone()
    }

    /// Whether a proxy reached at `url` is in the set.
    pub fn has(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        self.links.read_locked().iter().any(|l| l.url == url)
    }

    /// Adds `link` unless a proxy at its URL is in the set already.
    pub fn add(&self, link: Arc<ProxyLink>) -> bool {
        let mut links = self.links.write_locked();
        if links.iter().any(|l| l.url == link.url) {
            return false;
        }
        links.push(link);
        true
    }

    /// Keeps only the proxies `keep` says.
    pub fn retain(&self, keep: impl FnMut(&Arc<ProxyLink>) -> bool) {
        self.links.write_locked().retain(keep);
    }
}

/// The proxies in the order to try them now: those not set aside first, by
/// commission, then latency band, then at random; those set aside last (a
/// request still reaches one when every proxy is aside).
pub fn in_order(links: &[Arc<ProxyLink>]) -> Vec<Arc<ProxyLink>> {
    let now = Instant::now();
    let mut ranked: Vec<(Rank, Arc<ProxyLink>)> = links
        .iter()
        .map(|l| {
            let rank = Rank {
                aside: l.is_aside(now),
                commission_ppm: l.commission.ppm(),
                latency_band: l.latency_band(now),
                tie: random_u64(),
            };
            (rank, l.clone())
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, l)| l).collect()
}

/// Where a proxy stands for the next request; compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    aside: bool,
    commission_ppm: u64,
    latency_band: u64,
    tie: u64,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A tie-break only: a failed read leaves the ties in list order.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(url: &str, ppm: u64) -> Arc<ProxyLink> {
        let account = [ppm as u8; 32];
        Arc::new(ProxyLink {
            url: url.into(),
            commission: Commission::from_ppm(ppm).unwrap(),
            account,
            wallet: cocoon_ton::wallet::address_of(&account).unwrap(),
            payer: OnceLock::new(),
            health: Mutex::new(Health::default()),
        })
    }

    fn urls(links: &[Arc<ProxyLink>]) -> Vec<&str> {
        links.iter().map(|l| l.url()).collect()
    }

    #[test]
    fn the_lowest_commission_comes_first_then_the_fastest() {
        let (dear, cheap_slow, cheap_fast) =
            (link("dear", 200_000), link("cheap-slow", 50_000), link("cheap-fast", 50_000));
        cheap_slow.succeeded(Duration::from_millis(80));
        cheap_fast.succeeded(Duration::from_millis(10));
        dear.succeeded(Duration::from_millis(1));
        let all = [dear.clone(), cheap_slow.clone(), cheap_fast.clone()];
        assert_eq!(urls(&in_order(&all)), ["cheap-fast", "cheap-slow", "dear"]);
        // Long unmeasured, the slow one is tried as if new.
        cheap_slow.health.locked().latency.as_mut().unwrap().1 -= LATENCY_MEMORY;
        assert_eq!(in_order(&all)[0].url(), "cheap-slow");
    }

    #[test]
    fn alike_proxies_share_the_traffic() {
        let all: Vec<_> = (0..3).map(|i| link(&format!("p{i}"), 100_000)).collect();
        for l in &all {
            l.succeeded(Duration::from_millis(1));
        }
        let firsts: std::collections::BTreeSet<String> =
            (0..200).map(|_| in_order(&all)[0].url().to_string()).collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn a_failed_proxy_goes_last_for_longer_each_time_and_returns_when_it_answers() {
        let (a, b) = (link("a", 10_000), link("b", 20_000));
        let all = [a.clone(), b.clone()];
        a.failed("connection refused");
        assert_eq!(urls(&in_order(&all)), ["b", "a"], "set aside, though cheaper");
        let first = a.health.locked().aside_until.unwrap();
        a.failed("connection refused");
        let second = a.health.locked().aside_until.unwrap();
        assert!(second > first + Duration::from_millis(500), "the second failure sets it aside longer");
        for _ in 0..20 {
            a.failed("again");
        }
        let last = a.health.locked().aside_until.unwrap();
        assert!(last <= Instant::now() + MAX_ASIDE, "bounded");
        a.succeeded(Duration::from_millis(3));
        assert_eq!(urls(&in_order(&all)), ["a", "b"]);
    }
}
