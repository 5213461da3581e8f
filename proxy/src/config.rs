//! The proxy's configuration file (TOML) and its limits.
//!
//! ```toml
//! listen = "127.0.0.1:8090"
//! ledger = "/var/lib/cocoon-proxy/ledger.sqlite"
//! account_key = "/var/lib/cocoon-proxy/account.key"   # created 0600 when missing
//! commission_ppm = 100000          # 10 % on top of the worker's cost
//! credit_limit = 0                 # nanoTON a client may owe beyond its deposits
//! workers = ["http://10.0.0.5:8080"]
//! policy = "policy.toml"           # the attestation policy workers must pass
//! reference_values = ["worker-reference.json"]
//! reattest_interval_s = 60
//!
//! [limits]
//! max_in_flight = 4096
//!
//! [reputation]
//! half_life_s = 300
//!
//! [routing]                        # how price weighs against load and reputation (see `reputation`)
//! price_weight = 2.0               # 0: price does not count; 2: a worker twice as dear takes the overflow at 3/4 load
//! typical_prompt_tokens = 500      # the request the market quotes, and routes rank by when a client does not say
//! typical_completion_tokens = 250
//!
//! [ton]                            # payments on TON; without it, accounts are credited by `deposit`
//! api = "https://toncenter.com/api/v2"
//! settle_threshold = 1000000000    # claim a client's channel once it owes this much (nanoTON)
//! worker_deposit = 10000000000     # what each channel to a worker is funded with beyond its earnings
//! min_dispute_window_s = 3600      # shortest close window accepted on a client's channel
//! registry = "0:…"                 # admit only workers whose image and model this registry lists
//! registry_refresh_s = 60          # how often it is read again (a removal evicts without a restart)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use cocoon_protocol::{Commission, NanoTon};

use crate::reputation::ReputationConfig;

/// Where the ledger is when neither the config nor the command line says.
pub const DEFAULT_LEDGER: &str = "cocoon-proxy-ledger.sqlite";

/// Longest worker URL accepted.
const MAX_URL: usize = 512;

/// A worker URL the proxy will not fetch evidence from.
#[derive(Debug, thiserror::Error)]
#[error("worker URL {url:?}: {reason}")]
pub struct WorkerUrlError {
    /// The URL, cut to 80 characters.
    pub url: String,
    pub reason: &'static str,
}

/// Checks that a worker URL is an absolute http URL of bounded length.
pub fn check_worker_url(url: &str) -> Result<(), WorkerUrlError> {
    let bad = |reason| Err(WorkerUrlError { url: url.chars().take(80).collect(), reason });
    if url.len() > MAX_URL {
        return bad("longer than 512 bytes");
    }
    let Ok(parsed) = url::Url::parse(url) else { return bad("not a URL") };
    if parsed.scheme() != "http" || parsed.host().is_none() || parsed.query().is_some() {
        return bad("expected http://HOST[:PORT] (the content is sealed end to end; evidence authenticates itself)");
    }
    Ok(())
}

/// Largest config file accepted.
const MAX_CONFIG: u64 = 1 << 20;
/// Most workers a proxy admits.
pub const MAX_WORKERS_CAP: usize = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub ledger: PathBuf,
    pub account_key: PathBuf,
    pub commission_ppm: u64,
    pub credit_limit: NanoTon,
    /// Workers admitted at start and re-admitted whenever they come back.
    pub workers: Vec<String>,
    pub policy: Option<PathBuf>,
    pub reference_values: Vec<PathBuf>,
    /// CRLs and OCSP responses (DER or PEM) for workers' GPU attestation
    /// chains, read at each attestation (refresh them from NVIDIA's services).
    pub gpu_revocation: Vec<PathBuf>,
    /// DEVELOPMENT ONLY: admit workers with simulated evidence.
    pub insecure_simulated: bool,
    /// The proxy's own evidence: auto, tdx, sev-snp, or simulated (needs --insecure-simulated).
    pub platform: String,
    pub reattest_interval_s: f64,
    pub limits: Limits,
    pub reputation: ReputationConfig,
    pub routing: RoutingConfig,
    pub ton: Option<TonConfig>,
}

/// How the proxy weighs what workers charge (the formula is `reputation`'s).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The exponent of a worker's price relative to the cheapest eligible one.
    pub price_weight: f64,
    /// The request `GET /v1/market` quotes, and route requests without token counts are ranked for.
    pub typical_prompt_tokens: u32,
    pub typical_completion_tokens: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { price_weight: 2.0, typical_prompt_tokens: 500, typical_completion_tokens: 250 }
    }
}

/// Highest `routing.price_weight`: past it the dearer worker never gets overflow in practice.
const MAX_PRICE_WEIGHT: f64 = 8.0;

/// Payments on TON. The proxy's wallet is the v4R2 wallet of its account key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TonConfig {
    /// The TON HTTP API (toncenter v2) root.
    pub api: String,
    pub api_key: Option<String>,
    /// A client's channel is claimed once its vouchers exceed what was claimed by this much.
    pub settle_threshold: NanoTon,
    /// A channel to a worker is funded with its earnings plus this much.
    pub worker_deposit: NanoTon,
    /// The close window of the channels to workers.
    pub worker_dispute_window_s: u32,
    /// Client channels with a shorter close window are refused: the proxy must have time to claim.
    pub min_dispute_window_s: u32,
    /// The network's registry contract: when set, a worker is admitted only if
    /// the registry lists its image (reference values) and its model digest.
    pub registry: Option<String>,
    /// How often the registry is read again, in seconds.
    pub registry_refresh_s: f64,
    /// Chain-API calls per second the public endpoints (`/v1/vouchers` for a
    /// new channel, `/v1/payouts`) may make together; the rest of the API's
    /// quota is left to settlement.
    pub public_chain_rps: f64,
}

/// Shortest close window of the channels to workers: what their `cocoon
/// payouts` accepts by default, so that a worker has time to notice a close
/// request and claim.
pub const MIN_WORKER_DISPUTE_WINDOW_S: u32 = cocoon_client::payouts::DEFAULT_MIN_DISPUTE_WINDOW;
/// Shortest close window accepted on a client's channel: four passes of the
/// watcher (at least 10 s apart) before the client can take the rest back.
pub const MIN_CLIENT_DISPUTE_WINDOW_S: u32 = 40;

impl TonConfig {
    /// The registry's address, when one is configured.
    pub fn registry_address(&self) -> anyhow::Result<Option<cocoon_ton::TonAddress>> {
        self.registry
            .as_deref()
            .map(|a| cocoon_ton::channel::parse_address("ton.registry", a).map_err(|e| anyhow::anyhow!("{e}")))
            .transpose()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.registry_address()?;
        if !(self.public_chain_rps > 0.0 && self.public_chain_rps <= 1000.0) {
            anyhow::bail!("ton.public_chain_rps must be above 0 and at most 1000, found {}", self.public_chain_rps);
        }
        if !(1.0..=86_400.0).contains(&self.registry_refresh_s) {
            anyhow::bail!("ton.registry_refresh_s must be 1 to 86400, found {}", self.registry_refresh_s);
        }
        if self.worker_dispute_window_s < MIN_WORKER_DISPUTE_WINDOW_S {
            anyhow::bail!(
                "ton.worker_dispute_window_s must be at least {MIN_WORKER_DISPUTE_WINDOW_S}, found {}: workers refuse \
                 channels that leave them less time to claim after this proxy asks to close",
                self.worker_dispute_window_s
            );
        }
        if self.min_dispute_window_s < MIN_CLIENT_DISPUTE_WINDOW_S {
            anyhow::bail!(
                "ton.min_dispute_window_s must be at least {MIN_CLIENT_DISPUTE_WINDOW_S}, found {}: the proxy must \
                 have time to claim a client's channel after the client asks to close",
                self.min_dispute_window_s
            );
        }
        Ok(())
    }
}

impl Default for TonConfig {
    fn default() -> Self {
        TonConfig {
            api: "https://toncenter.com/api/v2".into(),
            api_key: None,
            settle_threshold: NanoTon(1_000_000_000),
            worker_deposit: NanoTon(10_000_000_000),
            worker_dispute_window_s: 86_400,
            min_dispute_window_s: 3600,
            registry: None,
            registry_refresh_s: 60.0,
            public_chain_rps: 0.5,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:8090".parse().expect("static address"),
            ledger: DEFAULT_LEDGER.into(),
            account_key: "cocoon-proxy.key".into(),
            commission_ppm: 100_000,
            credit_limit: NanoTon(0),
            workers: Vec::new(),
            policy: None,
            reference_values: Vec::new(),
            gpu_revocation: Vec::new(),
            insecure_simulated: false,
            platform: "auto".into(),
            reattest_interval_s: 60.0,
            limits: Limits::default(),
            reputation: ReputationConfig::default(),
            routing: RoutingConfig::default(),
            ton: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest sealed request body (bytes).
    pub max_body: usize,
    /// Largest request head (bytes); hyper refuses longer heads with 431.
    pub max_header_bytes: usize,
    /// Requests forwarded at once; past it the proxy answers 503.
    pub max_in_flight: usize,
    /// Client connections at once; past it new ones wait to be accepted.
    pub max_connections: usize,
    pub max_workers: usize,
    /// Joins (`POST /v1/workers`) accepted per minute, from everyone together.
    pub joins_per_minute: u32,
    pub connect_timeout_s: f64,
    /// Longest wait for a worker's response head (the first byte).
    pub first_byte_timeout_s: f64,
    /// Longest silence between two frames of a worker's answer.
    pub idle_timeout_s: f64,
    /// Longest a client may take to send its request head or body.
    pub client_timeout_s: f64,
    /// Longest an attestation of a worker may take.
    pub attest_timeout_s: f64,
    /// Requests hashes remembered (and refused when seen again) for this long.
    pub replay_window_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: cocoon_protocol::limits::MAX_SEALED_REQUEST,
            max_header_bytes: 16 << 10,
            max_in_flight: 4096,
            max_connections: 8192,
            max_workers: 1024,
            joins_per_minute: 60,
            connect_timeout_s: 5.0,
            first_byte_timeout_s: 120.0,
            idle_timeout_s: 120.0,
            client_timeout_s: 30.0,
            attest_timeout_s: 30.0,
            replay_window_s: 3600.0,
        }
    }
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl ProxyConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = cocoon_attestation::read_limited(path, MAX_CONFIG)
            .map_err(|e| anyhow::anyhow!("proxy config {}: {e}", path.display()))?;
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("proxy config {} is not UTF-8", path.display()))?;
        let config: ProxyConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("proxy config {}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks the combination; every way of building a config ends here.
    pub fn validate(&self) -> anyhow::Result<Commission> {
        let commission =
            Commission::from_ppm(self.commission_ppm).map_err(|e| anyhow::anyhow!("commission_ppm: {e}"))?;
        let l = &self.limits;
        if l.max_workers == 0 || l.max_workers > MAX_WORKERS_CAP {
            anyhow::bail!("limits.max_workers must be 1..={MAX_WORKERS_CAP}, found {}", l.max_workers);
        }
        if l.max_body == 0 || l.max_body > cocoon_protocol::limits::MAX_SEALED_REQUEST {
            anyhow::bail!(
                "limits.max_body must be 1..={}, found {}",
                cocoon_protocol::limits::MAX_SEALED_REQUEST,
                l.max_body
            );
        }
        if l.max_header_bytes < 8192 {
            anyhow::bail!("limits.max_header_bytes must be at least 8192, found {}", l.max_header_bytes);
        }
        if self.reattest_interval_s < 0.1 {
            anyhow::bail!("reattest_interval_s must be at least 0.1, found {}", self.reattest_interval_s);
        }
        for w in &self.workers {
            check_worker_url(w).map_err(|e| anyhow::anyhow!("workers: {e}"))?;
        }
        let r = &self.routing;
        if !(0.0..=MAX_PRICE_WEIGHT).contains(&r.price_weight) {
            anyhow::bail!("routing.price_weight must be 0..={MAX_PRICE_WEIGHT}, found {}", r.price_weight);
        }
        let max_tokens = cocoon_protocol::limits::MAX_TOKENS_CAP;
        if r.typical_prompt_tokens == 0 || r.typical_completion_tokens == 0 || r.typical_completion_tokens > max_tokens
        {
            anyhow::bail!(
                "routing.typical_prompt_tokens and typical_completion_tokens must be at least 1 (completion at most \
                 {max_tokens}), found {} and {}",
                r.typical_prompt_tokens,
                r.typical_completion_tokens
            );
        }
        if let Some(ton) = &self.ton {
            ton.validate()?;
        }
        Ok(commission)
    }
}
