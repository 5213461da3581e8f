//! What the network's on-chain registry allows, applied: a proxy admits only
//! workers whose image and model the registry lists, and a client uses only
//! proxies the registry lists (with the commission and endpoint listed) and
//! workers it lists.
//!
//! The registry is read through the TON HTTP API and re-read on a schedule
//! ([`Watched`]); a removal takes effect at the next read, without a restart.
//! Until the first read succeeds nothing is allowed: a registry that cannot be
//! read allows nothing rather than everything.
//!
//! Images are reference-values documents (`make measure`'s JSON): a worker's
//! hardware evidence must match one of them, exactly as it must match a
//! verifier's own `--reference-values` files. Simulated evidence (development
//! only, refused by every default policy) has no measurements to compare, so
//! for it only the model is checked, and the log says so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cocoon_attestation::reference::ReferenceValues;
use cocoon_attestation::{Policy, VerifiedWorker};
use cocoon_runtime::RwLockExt;
use cocoon_ton::registry::ProxyEntry;
use cocoon_ton::toncenter::{ChainError, Toncenter};
use cocoon_ton::{TonAddress, actions};
use tracing::{info, warn};

/// Shortest interval between two reads of the registry.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("the registry {registry}: {source}")]
    Chain { registry: String, source: ChainError },
    #[error("no registry is deployed at {0}")]
    NotDeployed(String),
    #[error("the registry {0} has not been read yet: nothing is allowed until it is")]
    NotRead(String),
    #[error("model {digest} is not in the registry {registry}")]
    ModelNotListed { digest: String, registry: String },
    #[error("the worker serves no model; the registry {0} allows models only")]
    NoModel(String),
    #[error("the proxy with account key {account} is not in the registry {registry}")]
    ProxyNotListed { account: String, registry: String },
    #[error("the registry lists this proxy {field} {listed:?}, but it {what} {found:?}")]
    ProxyMismatch { field: &'static str, listed: String, what: &'static str, found: String },
}

/// One read of the registry's lists, checked.
#[derive(Debug, Clone)]
pub struct Allowlist {
    pub registry: TonAddress,
    /// The listed images' reference values (documents that do not parse as
    /// reference values are left out and counted in `unreadable_images`).
    pub images: Vec<ReferenceValues>,
    pub unreadable_images: usize,
    pub models: BTreeSet<[u8; 32]>,
    /// Listed proxies by account key.
    pub proxies: BTreeMap<[u8; 32], ProxyEntry>,
}

impl Allowlist {
    /// Reads the registry at `registry` (every list checked, see `cocoon_ton::registry`).
    pub async fn read(chain: &Toncenter, registry: &TonAddress) -> Result<Allowlist, AllowlistError> {
        let lists = actions::registry_lists(chain, registry)
            .await
            .map_err(|source| AllowlistError::Chain { registry: registry.to_hex(), source })?
            .ok_or_else(|| AllowlistError::NotDeployed(registry.to_hex()))?;
        let mut images = Vec::new();
        let mut unreadable_images = 0;
        for (digest, doc) in &lists.images {
            match ReferenceValues::from_json(doc) {
                Ok(mut r) => {
                    if r.name.is_none() {
                        r.name = Some(format!("registry image {}", hex::encode(digest)));
                    }
                    images.push(r);
                }
                Err(e) => {
                    warn!(image = %hex::encode(digest), "a registry image is not a reference-values document: {e}");
                    unreadable_images += 1;
                }
            }
        }
        Ok(Allowlist {
            registry: registry.clone(),
            images,
            unreadable_images,
            models: lists.models.into_iter().collect(),
            proxies: lists.proxies,
        })
    }

    /// `local` with the registry's images as its only reference values: the
    /// evidence must pass the verifier's own policy and match a listed image.
    pub fn policy(&self, local: &Policy) -> Policy {
        Policy { reference_values: self.images.clone(), allow_any_measurement: false, ..local.clone() }
    }

    /// The worker's model must be listed (its image was checked by [`Allowlist::policy`]).
    pub fn check_worker(&self, worker: &VerifiedWorker) -> Result<(), AllowlistError> {
        let model = worker.claims().model.as_ref().ok_or_else(|| AllowlistError::NoModel(self.registry.to_hex()))?;
        let listed = <[u8; 32]>::try_from(model.digest.as_slice()).is_ok_and(|d| self.models.contains(&d));
        if !listed {
            return Err(AllowlistError::ModelNotListed {
                digest: hex::encode(&model.digest),
                registry: self.registry.to_hex(),
            });
        }
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if worker.platform() == cocoon_protocol::Platform::Simulated
            && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!("simulated evidence: the registry's images are NOT compared (it has no measurements); said once");
        }
        Ok(())
    }

    /// The proxy with `account` must be listed with this commission and endpoint.
    pub fn check_proxy(
        &self,
        account: &[u8; 32],
        commission_ppm: u64,
        endpoint: &str,
    ) -> Result<&ProxyEntry, AllowlistError> {
        let entry = self.proxies.get(account).ok_or_else(|| AllowlistError::ProxyNotListed {
            account: hex::encode(account),
            registry: self.registry.to_hex(),
        })?;
        if u64::from(entry.commission_ppm) != commission_ppm {
            return Err(AllowlistError::ProxyMismatch {
                field: "commission (ppm)",
                listed: entry.commission_ppm.to_string(),
                what: "states in its terms",
                found: commission_ppm.to_string(),
            });
        }
        if normalise(&entry.endpoint) != normalise(endpoint) {
            return Err(AllowlistError::ProxyMismatch {
                field: "endpoint",
                listed: entry.endpoint.clone(),
                what: "was reached at",
                found: endpoint.to_string(),
            });
        }
        Ok(entry)
    }
}

fn normalise(url: &str) -> String {
    url.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The newest read of a registry, re-read every `every` by [`Watched::refresh`].
pub struct Watched {
    chain: Toncenter,
    registry: TonAddress,
    every: Duration,
    current: RwLock<Option<Arc<Allowlist>>>,
    /// Bumped at each read that changed what is allowed.
    generation: std::sync::atomic::AtomicU64,
}

impl Watched {
    /// Reads the registry once (an error when it cannot be read) and returns
    /// the watcher; call [`Watched::refresh`] in a task to keep it current.
    pub async fn start(
        chain: Toncenter,
        registry: TonAddress,
        every: Duration,
    ) -> Result<Arc<Watched>, AllowlistError> {
        let first = Allowlist::read(&chain, &registry).await?;
        info!(
            registry = %registry.to_hex(),
            images = first.images.len(),
            models = first.models.len(),
            proxies = first.proxies.len(),
            "registry read"
        );
        Ok(Arc::new(Watched {
            chain,
            registry,
            every: every.max(MIN_REFRESH),
            current: RwLock::new(Some(Arc::new(first))),
            generation: std::sync::atomic::AtomicU64::new(1),
        }))
    }

    pub fn registry(&self) -> &TonAddress {
        &self.registry
    }

    /// The newest read.
    pub fn current(&self) -> Result<Arc<Allowlist>, AllowlistError> {
        self.current.read_locked().clone().ok_or_else(|| AllowlistError::NotRead(self.registry.to_hex()))
    }

    /// Changes with every read that changed the lists (callers drop caches on it).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Re-reads once; returns whether the lists changed. A failed read keeps
    /// the last good one (a chain API outage does not open the gates or close
    /// them) and is reported.
    pub async fn refresh_once(&self) -> Result<bool, AllowlistError> {
        let new = Allowlist::read(&self.chain, &self.registry).await?;
        let mut current = self.current.write_locked();
        let changed = current
            .as_ref()
            .is_none_or(|old| old.images != new.images || old.models != new.models || old.proxies != new.proxies);
        if changed {
            info!(
                registry = %self.registry.to_hex(),
                images = new.images.len(),
                models = new.models.len(),
                proxies = new.proxies.len(),
                "the registry changed"
            );
            *current = Some(Arc::new(new));
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(changed)
    }

    /// Re-reads every interval, forever; `on_change` runs after each read that changed the lists.
    pub async fn refresh(self: Arc<Self>, on_change: impl Fn() + Send + Sync + 'static) {
        loop {
            tokio::time::sleep(self.every).await;
            match self.refresh_once().await {
                Ok(true) => on_change(),
                Ok(false) => {}
                Err(e) => warn!("re-reading the registry failed, keeping the last read: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(b: u8) -> TonAddress {
        TonAddress::from_hex_str(&format!("0:{}", hex::encode([b; 32]))).unwrap()
    }

    fn list() -> Allowlist {
        let entry =
            ProxyEntry { wallet: addr(1), commission_ppm: 100_000, endpoint: "https://proxy.example:8090/".into() };
        Allowlist {
            registry: addr(9),
            images: vec![ReferenceValues { name: Some("image".into()), ..Default::default() }],
            unreadable_images: 0,
            models: [[7; 32]].into_iter().collect(),
            proxies: [([5; 32], entry)].into_iter().collect(),
        }
    }

    #[test]
    fn a_proxy_must_be_listed_with_its_commission_and_endpoint() {
        let l = list();
        assert!(l.check_proxy(&[5; 32], 100_000, "https://PROXY.example:8090").is_ok(), "case and a slash aside");
        let e = l.check_proxy(&[6; 32], 100_000, "https://proxy.example:8090").unwrap_err();
        assert!(matches!(e, AllowlistError::ProxyNotListed { .. }), "{e}");
        let e = l.check_proxy(&[5; 32], 100_001, "https://proxy.example:8090").unwrap_err();
        assert!(e.to_string().contains("commission (ppm) \"100000\""), "{e}");
        let e = l.check_proxy(&[5; 32], 100_000, "http://proxy.example:8090").unwrap_err();
        assert!(e.to_string().contains("endpoint"), "{e}");
    }

    #[test]
    fn the_registry_images_replace_the_local_reference_values_and_allow_no_other_measurement() {
        let local = Policy { allow_any_measurement: true, reference_values: vec![], ..Policy::default() };
        let p = list().policy(&local);
        assert_eq!(p.reference_values, list().images);
        assert!(!p.allow_any_measurement, "a registry image must match");
        assert_eq!(p.allowed_platforms, local.allowed_platforms, "the rest of the local policy stays");
    }
}
