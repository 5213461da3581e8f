//! `cocoon serve`: the client runner, an OpenAI-compatible API on loopback.
//!
//! An app talks to it as to any OpenAI server. For each request the runner
//! asks the proxy for a worker, verifies that worker's evidence under the
//! client's own policy (cached per evidence digest), seals the request to the
//! worker's key, signs the proxy's charge authorisation, streams the answer
//! back, and checks the receipt and the charge before it reports the cost.
//! A worker that fails before the app saw its answer is replaced
//! transparently; so is a proxy (the runner may use several, see
//! [`crate::proxies`]). With `--worker URL` it talks to one worker directly,
//! without a proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use cocoon_attestation::{Policy, VerifiedWorker};
use cocoon_protocol::authorization::ClientAuthorization;
use cocoon_protocol::bhttp_msg::{InnerRequest, ResponseEvent};
use cocoon_protocol::proxy_api::{ApiError, ErrorCode, RouteAnswer, RouteRequest, WorkersList};
use cocoon_protocol::{Commission, NanoTon, Prices, VerifiedReceipt, limits, media};
use cocoon_runtime::LockExt;

use crate::allowlist::Watched;
use crate::chat::SseParser;
use crate::endorsements::EndorsementSources;
use crate::http::{HttpClient, join};
use crate::proxies::{ProxyLink, ProxySet, in_order};
use crate::worker::{ClientError, ResponseStream, Route, Worker};

/// Workers tried for one request before the runner gives up.
const MAX_ATTEMPTS: usize = 4;
/// Longest a request waits for a worker with free capacity.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// Longest a proxy may take to answer a route request before the next one is tried.
const ROUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Verified evidence kept (by digest) so that each request need not re-verify.
const MAX_CACHED: usize = 256;
/// Largest body an app may send.
const MAX_APP_BODY: usize = limits::MAX_INNER_REQUEST - 4096;
/// Header an app may set to bound one request's cost (nanoTON).
pub const APP_MAX_COST_HEADER: &str = "x-cocoon-max-cost";
/// The app's price ceiling for one request, `PROMPT,COMPLETION` nanoTON per
/// 1,000 tokens (instead of the runner's `--max-price-per-1k`).
pub const APP_MAX_PRICE_HEADER: &str = "x-cocoon-max-price-per-1k";

/// Where the runner sends requests.
pub enum Upstream {
    /// Verified proxies, tried in order for each request (see [`crate::proxies`]).
    Proxies(ProxySet),
    Direct {
        worker: Arc<Worker>,
    },
}

pub struct Runner {
    pub upstream: Upstream,
    pub policy: Policy,
    pub sources: EndorsementSources,
    pub key: SigningKey,
    /// The most one request may cost when the app does not say (nanoTON, commission included).
    pub default_max_cost: NanoTon,
    http: HttpClient,
    /// Verified evidence by its digest and the registry read it was checked against.
    verified: Mutex<HashMap<([u8; 32], u64), VerifiedWorker>>,
    /// The network's registry: only the proxies, images and models it lists are used.
    allowlist: Option<Arc<Watched>>,
    /// The most a worker may charge per 1,000 prompt and completion tokens
    /// when the app does not say: other workers are never used.
    max_price: Option<Prices>,
    /// Opens a channel to a proxy on its first request, when the runner may.
    opener: Option<crate::pay::ChannelOpener>,
    /// Channels given for proxies not verified yet (down at start): used
    /// when their proxy is.
    pending_channels: Mutex<Vec<crate::pay::ChannelPayer>>,
    /// Proxies that could not be verified at start.
    unverified: Vec<String>,
}

impl Runner {
    /// Connects to a proxy: fetches its terms and its evidence, verifies that
    /// the evidence passes `policy` and binds exactly these terms.
    pub async fn via_proxy(
        proxy: &str,
        policy: Policy,
        sources: EndorsementSources,
        key: SigningKey,
        default_max_cost: NanoTon,
    ) -> Result<Self, ClientError> {
        Self::via_proxies(&[proxy.to_string()], policy, sources, key, default_max_cost).await
    }

    /// Connects to several proxies, each verified as [`Runner::via_proxy`]
    /// verifies one; those that fail are left out (and logged), and at least
    /// one must pass. Each request then goes to the first of them in
    /// [`in_order`] that serves it.
    pub async fn via_proxies(
        proxies: &[String],
        policy: Policy,
        sources: EndorsementSources,
        key: SigningKey,
        default_max_cost: NanoTon,
    ) -> Result<Self, ClientError> {
        let http = HttpClient::default();
        let mut links = Vec::new();
        let mut refused = Vec::new();
        let mut unverified = Vec::new();
        for url in proxies {
            match ProxyLink::verify(&http, url, &policy, &sources).await {
                Ok(link) => links.push(Arc::new(link)),
                Err(e) if proxies.len() == 1 => return Err(e),
                Err(e) => {
                    warn!(proxy = %url, "left out for now (tried again later): {e}");
                    refused.push(format!("{url}: {e}"));
                    unverified.push(url.clone());
                }
            }
        }
        if links.is_empty() {
            return Err(ClientError::NoProxy { tried: proxies.len(), reasons: refused.join("; ") });
        }
        Ok(Runner {
            upstream: Upstream::Proxies(ProxySet::new(links)),
            policy,
            sources,
            key,
            default_max_cost,
            http,
            verified: Mutex::new(HashMap::new()),
            allowlist: None,
            max_price: None,
            opener: None,
            pending_channels: Mutex::new(Vec::new()),
            unverified,
        })
    }

    /// Uses only workers whose attested prices are at or below `ceiling`
    /// (per 1,000 prompt and completion tokens) unless an app says otherwise
    /// for a request: the proxy is asked for such workers, and each routed
    /// worker's prices are checked here again.
    pub fn with_max_price(mut self, ceiling: Option<Prices>) -> Self {
        self.max_price = ceiling;
        self
    }

    /// Uses only what the registry `watched` lists: a proxy is left out now
    /// unless the registry lists it with the commission its terms state and
    /// the endpoint it was reached at (refused when that leaves none); every
    /// request checks the newest read again (a removal stops the runner's use
    /// of a proxy without a restart), and each worker's evidence must match a
    /// listed image and name a listed model.
    pub fn with_registry(mut self, watched: Arc<Watched>) -> Result<Self, ClientError> {
        let list = watched.current()?;
        match &mut self.upstream {
            Upstream::Direct { worker } => list.check_worker(worker.verified())?,
            Upstream::Proxies(set) => {
                let mut first_refusal = None;
                set.retain(|l| match check_listed(&list, l) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(proxy = %l.url(), "left out: {e}");
                        first_refusal.get_or_insert(e);
                        false
                    }
                });
                if let (true, Some(e)) = (set.snapshot().is_empty(), first_refusal) {
                    return Err(e);
                }
            }
        }
        self.allowlist = Some(watched);
        Ok(self)
    }

    /// The proxies to try for a request, in order: with a registry, only
    /// those its newest read still lists as they present themselves.
    fn usable_proxies(&self, links: &[Arc<ProxyLink>]) -> Result<Vec<Arc<ProxyLink>>, AppError> {
        let Some(w) = &self.allowlist else { return Ok(in_order(links)) };
        let not_listed = |m: String| AppError {
            status: 503,
            code: ErrorCode::ProxyNotListed,
            message: format!("the registry no longer allows this runner's proxies: {m}"),
        };
        let list = w.current().map_err(|e| not_listed(e.to_string()))?;
        let mut reasons = Vec::new();
        let listed: Vec<Arc<ProxyLink>> = links
            .iter()
            .filter(|l| match check_listed(&list, l) {
                Ok(()) => true,
                Err(e) => {
                    reasons.push(format!("{}: {e}", l.url()));
                    false
                }
            })
            .cloned()
            .collect();
        if listed.is_empty() {
            return Err(not_listed(reasons.join("; ")));
        }
        Ok(in_order(&listed))
    }

    /// Pays the proxy whose wallet the channel in `channel_file` pays (see
    /// [`crate::pay`]); refused when it pays none of this runner's proxies.
    pub fn with_channel(self, channel_file: &std::path::Path) -> Result<Self, ClientError> {
        let Upstream::Proxies(set) = &self.upstream else {
            return Err(ClientError::ChannelWithoutProxy);
        };
        let links = set.snapshot();
        // Whom it pays first: a channel to someone else is refused as such, funded or not.
        let (params, _) = crate::channel_file::load_channel(channel_file).map_err(|e| ClientError::ChannelFile {
            path: channel_file.display().to_string(),
            reason: format!("{e:#}"),
        })?;
        let payee = params.payee;
        let Some(link) = links.iter().find(|l| *l.wallet() == payee) else {
            let reason = match &links[..] {
                [one] => {
                    format!("it pays {payee}, but the proxy's wallet (of its attested account key) is {}", one.wallet())
                }
                _ => {
                    let wallets: Vec<String> = links.iter().map(|l| format!("{} at {}", l.wallet(), l.url())).collect();
                    format!(
                        "it pays {payee}, which is none of the proxies' wallets (of their attested account keys): {}",
                        wallets.join(", ")
                    )
                }
            };
            if !self.unverified.is_empty() {
                let payer = crate::pay::ChannelPayer::load(channel_file, &self.key)?;
                warn!(channel = %channel_file.display(), "{reason}; kept for a proxy not verified yet");
                self.pending_channels.locked().push(payer);
                return Ok(self);
            }
            return Err(ClientError::ChannelFile { path: channel_file.display().to_string(), reason });
        };
        let payer = crate::pay::ChannelPayer::load(channel_file, &self.key)?;
        info!(channel = %payer.params().address().map(|a| a.to_hex()).unwrap_or_default(), proxy = %link.url(), "paying the proxy through a channel");
        link.set_payer(payer)?;
        if let Some(w) = &self.allowlist {
            check_listed(&*w.current()?, link)?;
        }
        Ok(self)
    }

    /// Opens a channel to each proxy without one on the first request that
    /// goes to it, through `opener` (within its budget); channels it opened
    /// before for these proxies are used again. A proxy the budget leaves
    /// without a channel is not used.
    pub fn with_channel_opener(mut self, opener: crate::pay::ChannelOpener) -> Result<Self, ClientError> {
        opener.load_existing(&self.proxies(), &self.key)?;
        if let Some(w) = &self.allowlist {
            let list = w.current()?;
            for link in self.proxies() {
                check_listed(&list, &link)?;
            }
        }
        self.opener = Some(opener);
        Ok(self)
    }

    /// Shows each proxy paid through a channel that channel (see
    /// [`crate::pay::ChannelPayer::register`]).
    pub async fn register_channel(&self) -> Result<(), ClientError> {
        if let Upstream::Proxies(set) = &self.upstream {
            for link in set.snapshot() {
                if let Some(payer) = link.payer() {
                    payer.register(&self.key, &self.http, link.url()).await?;
                }
            }
        }
        Ok(())
    }

    /// Verifies the proxies at `urls` not in use yet (down at start, or
    /// listed since) and adds those that pass and, with a registry, are
    /// listed as they present themselves; a channel given for one pays it
    /// from then on. Returns how many were added.
    pub async fn adopt_proxies(&self, urls: &[String]) -> usize {
        let Upstream::Proxies(set) = &self.upstream else { return 0 };
        let mut added = 0;
        for url in urls.iter().filter(|u| !set.has(u)) {
            let link = match ProxyLink::verify(&self.http, url, &self.policy, &self.sources).await {
                Ok(link) => Arc::new(link),
                Err(e) => {
                    tracing::debug!(proxy = %url, "still not used: {e}");
                    continue;
                }
            };
            let pending = {
                let mut pending = self.pending_channels.locked();
                pending.iter().position(|p| p.params().payee == *link.wallet()).map(|i| pending.remove(i))
            };
            let attached = match pending {
                Some(payer) => link.set_payer(payer),
                None => match &self.opener {
                    Some(o) => o.load_existing(std::slice::from_ref(&link), &self.key),
                    None => Ok(()),
                },
            };
            let listed = match &self.allowlist {
                Some(w) => w.current().map_err(ClientError::from).and_then(|l| check_listed(&l, &link)),
                None => Ok(()),
            };
            if let Err(e) = attached.and(listed) {
                warn!(proxy = %url, "not used: {e}");
                continue;
            }
            if let Some(payer) = link.payer()
                && let Err(e) = payer.register(&self.key, &self.http, link.url()).await
            {
                warn!(proxy = %url, "not used yet: showing it the channel: {e}");
                continue;
            }
            if set.add(link) {
                info!(proxy = %url, "proxy verified and used from now on");
                added += 1;
            }
        }
        added
    }

    /// Every `every`, [`Runner::adopt_proxies`] for the proxies `wanted`
    /// names then (the ones given, or those the registry lists).
    pub async fn keep_adopting(self: Arc<Self>, wanted: impl Fn() -> Vec<String>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.adopt_proxies(&wanted()).await;
        }
    }

    /// The proxies this runner uses (none when it talks to a worker directly).
    pub fn proxies(&self) -> Vec<Arc<ProxyLink>> {
        match &self.upstream {
            Upstream::Proxies(set) => set.snapshot(),
            Upstream::Direct { .. } => Vec::new(),
        }
    }

    /// Talks to one worker directly (attested with a fresh nonce now).
    pub async fn direct(
        worker_url: &str,
        policy: Policy,
        sources: EndorsementSources,
        key: SigningKey,
        default_max_cost: NanoTon,
    ) -> Result<Self, ClientError> {
        let worker = Worker::attest_with(worker_url, &policy, &sources, true).await?;
        Ok(Runner {
            upstream: Upstream::Direct { worker: Arc::new(worker) },
            policy,
            sources,
            key,
            default_max_cost,
            http: HttpClient::default(),
            verified: Mutex::new(HashMap::new()),
            allowlist: None,
            max_price: None,
            opener: None,
            pending_channels: Mutex::new(Vec::new()),
            unverified: Vec::new(),
        })
    }

    /// Asks the proxy for a worker of `model` and verifies its evidence (cached by digest).
    async fn routed_worker(
        &self,
        proxy: &ProxyLink,
        model: &str,
        exclude: &[String],
        demand: &Demand,
    ) -> Result<Worker, Failure> {
        // A policy that requires GPUs of certain chips asks the proxy for such workers only.
        let gpu: &[String] = if self.policy.gpu.required { &self.policy.gpu.allowed_chips } else { &[] };
        let ask = RouteRequest {
            model: model.to_string(),
            exclude: exclude.to_vec(),
            gpu: gpu.to_vec(),
            prompt_tokens: Some(demand.prompt_tokens),
            max_tokens: Some(demand.max_tokens),
            max_price: demand.max_price,
        };
        let body = serde_json::to_vec(&ask).expect("JSON encodes");
        let uri = join(proxy.url(), "/v1/route").map_err(|e| Failure::Proxy(AppError::upstream(e)))?;
        let req = http::Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("valid request");
        let started = tokio::time::Instant::now();
        let answered = tokio::time::timeout(ROUTE_TIMEOUT, async {
            let resp = self.http.send(req).await.map_err(AppError::upstream)?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), limits::MAX_EVIDENCE * 2)
                .collect()
                .await
                .map_err(|e| AppError::upstream(format!("reading the route answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        })
        .await;
        let (status, bytes) = match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Failure::Proxy(e)),
            Err(_) => {
                return Err(Failure::Proxy(AppError::upstream(format!(
                    "the proxy did not answer the route request within {ROUTE_TIMEOUT:?}"
                ))));
            }
        };
        if !status.is_success() {
            let e = match ApiError::parse(&bytes) {
                Some(e) => AppError { status: status.as_u16(), code: e.error.code, message: e.error.message },
                None => AppError {
                    status: status.as_u16(),
                    code: ErrorCode::WorkerUnavailable,
                    message: format!("the proxy refused to route (HTTP {status})"),
                },
            };
            return Err(match e.code {
                ErrorCode::NoWorkerAvailable => Failure::Busy(e),
                _ if status.is_server_error() => Failure::Proxy(e),
                _ => Failure::Request(e),
            });
        }
        proxy.succeeded(started.elapsed());
        let answer: RouteAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Proxy(AppError::upstream(format!("route answer: {e}"))))?;
        let id = answer.worker.id.as_str();
        let evidence = base64::engine::general_purpose::STANDARD
            .decode(&answer.evidence)
            .map_err(|_| Failure::Proxy(AppError::upstream("route answer: evidence is not base64")))?;
        let route = Route::ViaProxy { proxy: proxy.url().to_string(), worker_id: id.to_string() };
        let refused = |m: String| {
            Failure::Request(AppError {
                status: 502,
                code: ErrorCode::WorkerRefused,
                message: format!("worker {id}: {m}"),
            })
        };
        // With a registry, the cache holds verdicts of its newest read only.
        let (listed, generation) = match &self.allowlist {
            Some(w) => (Some(w.current().map_err(|e| refused(e.to_string()))?), w.generation()),
            None => (None, 0),
        };
        let key = (<[u8; 32]>::from(Sha256::digest(&evidence)), generation);
        if let Some(v) = self.verified.locked().get(&key).cloned() {
            return Ok(Worker::with_verified(route, self.http.clone(), v));
        }
        let policy = match &listed {
            Some(l) => std::borrow::Cow::Owned(l.policy(&self.policy)),
            None => std::borrow::Cow::Borrowed(&self.policy),
        };
        let worker = Worker::from_evidence(route, self.http.clone(), &evidence, &policy, &self.sources)
            .await
            .map_err(|e| refused(e.to_string()))?;
        if let Some(l) = &listed {
            l.check_worker(worker.verified()).map_err(|e| refused(e.to_string()))?;
        }
        let mut cache = self.verified.locked();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, worker.verified().clone());
        Ok(worker)
    }

    /// Routes, seals and sends, through the first proxy in order that takes
    /// the request (or to the one worker); waits a while when every worker
    /// is busy.
    async fn open_stream(
        &self,
        model: &str,
        inner: &InnerRequest,
        demand: &Demand,
        failed: &[String],
    ) -> Result<Sent, AppError> {
        // Workers tried for this request, over proxies and waits, and why the last failed.
        let mut tried = Tried::default();
        let links = match &self.upstream {
            Upstream::Direct { .. } => {
                return self.open_via(None, model, inner, demand, failed, &mut tried).await.map_err(Failure::into_app);
            }
            Upstream::Proxies(set) => set.snapshot(),
        };
        let busy_until = tokio::time::Instant::now() + BUSY_WAIT;
        let mut backoff = std::time::Duration::from_millis(25);
        loop {
            let mut busy = None;
            let mut last = None;
            for link in self.usable_proxies(&links)? {
                if let Some(opener) = &self.opener
                    && let Err(e) = opener.ensure(&link, &self.key, &self.http).await
                {
                    match e {
                        // Said once per proxy, by the opener.
                        ClientError::ChannelBudget { .. } => tracing::debug!(proxy = %link.url(), "not used: {e}"),
                        _ => warn!(proxy = %link.url(), "not used: {e}"),
                    }
                    last = Some(format!("{}: {e}", link.url()));
                    continue;
                }
                match self.open_via(Some(&link), model, inner, demand, failed, &mut tried).await {
                    Ok(sent) => return Ok(sent),
                    Err(Failure::Proxy(e)) => {
                        link.failed(&e.message);
                        last = Some(format!("{}: {}", link.url(), e.message));
                    }
                    Err(Failure::Busy(e)) => busy = Some(e),
                    Err(Failure::Request(e)) => return Err(e),
                }
            }
            match busy {
                Some(_) if tried.attempts >= MAX_ATTEMPTS => return Err(tried.exhausted()),
                // Every worker is busy (or the ones left were excluded): nothing was
                // sent yet, so wait a little for capacity instead of failing the app.
                Some(_) if tokio::time::Instant::now() < busy_until => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                Some(e) => return Err(e),
                None => {
                    return Err(AppError {
                        status: 503,
                        code: ErrorCode::UpstreamError,
                        message: format!("no proxy took the request; last: {}", last.unwrap_or_default()),
                    });
                }
            }
        }
    }

    /// Routes, seals and sends through `proxy` (or to the one worker);
    /// replaces a worker that fails before answering.
    async fn open_via(
        &self,
        proxy: Option<&Arc<ProxyLink>>,
        model: &str,
        inner: &InnerRequest,
        demand: &Demand,
        failed: &[String],
        tried: &mut Tried,
    ) -> Result<Sent, Failure> {
        let commission = proxy.map(|p| p.commission()).unwrap_or_default();
        let mut exclude: Vec<String> = failed.to_vec();
        while tried.attempts < MAX_ATTEMPTS {
            let worker = match (&self.upstream, proxy) {
                (_, Some(p)) => self.routed_worker(p, model, &exclude, demand).await?,
                (Upstream::Direct { worker }, None) => {
                    Worker::with_verified(worker.route().clone(), self.http.clone(), worker.verified().clone())
                }
                (Upstream::Proxies(_), None) => unreachable!("a request through proxies names its proxy"),
            };
            tried.attempts += 1;
            // What this request can cost at this worker's attested prices: the
            // most the runner signs for, and so what the proxy reserves.
            let prices = worker.verified().claims().prices.unwrap_or_default();
            // The proxy is not trusted to keep the client's ceiling.
            if let Some(ceiling) = demand.max_price
                && !prices.within(&ceiling)
            {
                let id = worker.id().to_string();
                let message = format!(
                    "worker {id} charges {} and {} nanoTON per 1,000 prompt and completion tokens, above the \
                     ceiling of {} and {}",
                    prices.prompt_per_1k.0,
                    prices.completion_per_1k.0,
                    ceiling.prompt_per_1k.0,
                    ceiling.completion_per_1k.0
                );
                if proxy.is_none() {
                    return Err(Failure::Request(AppError {
                        status: 402,
                        code: ErrorCode::PriceAboveCeiling,
                        message,
                    }));
                }
                warn!(worker = %id, "the proxy routed above the price ceiling; excluded: {message}");
                exclude.push(id);
                tried.last = Some(message);
                continue;
            }
            let max_cost = demand.max_cost(&prices, commission);
            let budget = commission.worker_budget(max_cost);
            let mut sealed = inner.clone();
            sealed.headers.push((media::MAX_WORKER_COST_HEADER.into(), budget.0.to_string()));
            let key = &self.key;
            let result = worker
                .stream_with(&sealed, |hash| {
                    if proxy.is_none() {
                        return Vec::new();
                    }
                    ClientAuthorization::sign(key, hash, max_cost).header_values().into()
                })
                .await;
            match result {
                Ok(stream) => return Ok(Sent { stream, worker, max_cost, via: proxy.cloned() }),
                Err(ClientError::Retryable { worker: id, message, next_worker }) => {
                    warn!(worker = %id, "failing over: {message}");
                    // A worker that restarted with new keys is named again: re-seal to it.
                    if next_worker.as_deref() != Some(id.as_str()) {
                        exclude.push(id);
                    }
                    tried.last = Some(message);
                }
                // The proxy could not be reached, or failed, before anything was answered.
                Err(e @ (ClientError::Http(_) | ClientError::Status { status: 500.., .. })) if proxy.is_some() => {
                    return Err(Failure::Proxy(AppError::from_client(e)));
                }
                Err(e) => return Err(Failure::Request(AppError::from_client(e))),
            }
        }
        Err(Failure::Busy(tried.exhausted()))
    }

    /// After a verified charge: the voucher for it, when `via` is paid through a channel.
    async fn pay(&self, via: Option<&ProxyLink>, charge: NanoTon) {
        if let Some(link) = via
            && let Some(payer) = link.payer()
        {
            payer.pay(charge, &self.key, &self.http, link.url()).await;
        }
    }
}

/// The workers one request was sent to (or refused) so far.
#[derive(Default)]
struct Tried {
    attempts: usize,
    /// Why the last one failed.
    last: Option<String>,
}

impl Tried {
    fn exhausted(&self) -> AppError {
        AppError {
            status: 503,
            code: ErrorCode::NoWorkerAvailable,
            message: format!("{MAX_ATTEMPTS} workers failed; last: {}", self.last.as_deref().unwrap_or_default()),
        }
    }
}

/// Why a request could not be sent through a proxy.
enum Failure {
    /// The proxy could not be reached, did not answer in time, failed (5xx)
    /// or answered nonsense, before anything was sent: another proxy may.
    Proxy(AppError),
    /// No worker had room (or those left failed): wait, or try another proxy.
    Busy(AppError),
    /// The request itself was refused: the app gets this answer.
    Request(AppError),
}

impl Failure {
    fn into_app(self) -> AppError {
        match self {
            Failure::Proxy(e) | Failure::Busy(e) | Failure::Request(e) => e,
        }
    }
}

/// The proxy is listed as it presents itself: its account, with the
/// commission its terms state, at the endpoint it was reached at, and (when
/// paid through a channel) with the wallet the channel pays.
fn check_listed(list: &crate::allowlist::Allowlist, link: &ProxyLink) -> Result<(), ClientError> {
    let entry = list.check_proxy(link.account(), link.commission().ppm(), link.url())?;
    if let Some(payer) = link.payer()
        && payer.params().payee != entry.wallet
    {
        return Err(ClientError::ListedWallet {
            listed: entry.wallet.to_string(),
            channel: payer.params().payee.to_string(),
        });
    }
    Ok(())
}

struct Sent {
    stream: ResponseStream,
    worker: Worker,
    /// The maximum cost signed for this request.
    max_cost: NanoTon,
    /// The proxy it went through.
    via: Option<Arc<ProxyLink>>,
}

/// Most times a request is sent again because its worker (or its proxy)
/// failed before the app saw anything of the answer.
const MAX_UNSEEN_RETRIES: usize = 3;

/// An answer as far as it is read before anything goes to the app: its
/// head, and its content up to the first token of a stream (a whole answer,
/// or an error, is read to its end). A worker or proxy that fails before
/// then is replaced without the app noticing, and paid for once: the proxy
/// charges nothing for a stream whose worker failed, and a proxy that broke
/// off sent no charge the runner would pay.
struct Begun {
    sent: Sent,
    status: u16,
    content_type: String,
    /// The content read so far, none of it passed on yet.
    prefix: Vec<Bytes>,
}

impl Runner {
    async fn begin(
        &self,
        model: &str,
        inner: &InnerRequest,
        demand: &Demand,
        streamed: bool,
    ) -> Result<Begun, AppError> {
        let mut failed: Vec<String> = Vec::new();
        let mut retries = 0;
        loop {
            let mut sent = self.open_stream(model, inner, demand, &failed).await?;
            let result = read_unseen(&mut sent.stream, streamed).await;
            let again = retries < MAX_UNSEEN_RETRIES;
            match (result, &sent.via) {
                (Ok((status, content_type, prefix)), _) => return Ok(Begun { sent, status, content_type, prefix }),
                (Err(ClientError::WorkerFailed { message, .. }), _) if again => {
                    let id = sent.worker.id().to_string();
                    warn!(worker = %id, "the worker failed before the app saw its answer; sending it to another: {message}");
                    failed.push(id);
                }
                // The proxy's connection broke: the request goes to the next proxy.
                (Err(e @ ClientError::Http(_)), Some(link)) if again && self.proxies().len() > 1 => {
                    link.failed(&e.to_string());
                    warn!(proxy = %link.url(), "the proxy broke off before the app saw the answer; sending it through another: {e}");
                }
                (Err(e), _) => return Err(AppError::from_client(e)),
            }
            retries += 1;
        }
    }
}

/// Reads the head and then what the app has not seen yet: a whole answer or
/// an error to its end, a 200 stream up to its first event with a token, its
/// usage, its end or an error.
async fn read_unseen(stream: &mut ResponseStream, streamed: bool) -> Result<(u16, String, Vec<Bytes>), ClientError> {
    let (status, content_type) = match stream.next_event().await? {
        Some(ResponseEvent::Head { status, headers }) => {
            let ct = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.clone());
            (status, ct.unwrap_or_else(|| "application/json".into()))
        }
        _ => return Err(ClientError::Answer { what: "the sealed answer", reason: "it has no head".into() }),
    };
    let mut prefix = Vec::new();
    let mut size = 0;
    let mut parser = SseParser::default();
    while let Some(e) = stream.next_event().await? {
        let ResponseEvent::Content(c) = e else { continue };
        size += c.len();
        if size > limits::MAX_SEALED_RESPONSE {
            return Err(ClientError::Answer { what: "the answer", reason: "larger than the limit".into() });
        }
        let seen = streamed && status == 200 && parser.push(&c)?.iter().any(|data| shows_content(data));
        prefix.push(Bytes::from(c));
        if seen {
            break;
        }
    }
    Ok((status, content_type, prefix))
}

/// Whether an SSE event of an answer gives the app anything: text, the end,
/// the usage, or something that is not a bare role chunk.
fn shows_content(data: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(data) else { return true };
    let choice = &v["choices"][0];
    let text = choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or("");
    !text.is_empty() || !choice["finish_reason"].is_null() || !v["usage"].is_null() || !v["error"].is_null()
}

/// What one request may use, known before a worker is chosen.
struct Demand {
    /// The app's ceiling for one request (its header, or the runner's default).
    ceiling: NanoTon,
    /// An upper bound on the prompt's tokens.
    prompt_tokens: u32,
    /// The completion tokens the worker will grant at most.
    max_tokens: u32,
    /// The price ceiling per 1,000 prompt and completion tokens.
    max_price: Option<Prices>,
}

/// Prompt tokens per byte of the request body, at most, plus room for the
/// chat template. Byte-level tokenizers give every ordinary token at least one
/// byte of text, and a message's JSON framing (`{"role":"user","content":""}`,
/// 29 bytes) is longer than the special tokens its template adds; the slack
/// covers a template's default system prompt.
const PROMPT_TOKEN_SLACK: u32 = 64;

impl Demand {
    fn of(ceiling: NanoTon, max_price: Option<Prices>, body: &Value, body_len: usize) -> Result<Demand, AppError> {
        let asked = body.get("max_completion_tokens").or_else(|| body.get("max_tokens"));
        let max_tokens = match asked {
            None | Some(Value::Null) => limits::DEFAULT_MAX_TOKENS,
            Some(v) => v
                .as_u64()
                .filter(|&n| n >= 1)
                .ok_or_else(|| AppError::invalid("max_tokens: expected a whole number of at least 1"))?
                .min(limits::MAX_TOKENS_CAP as u64) as u32,
        };
        let prompt_tokens = u32::try_from(body_len).unwrap_or(u32::MAX).saturating_add(PROMPT_TOKEN_SLACK);
        Ok(Demand { ceiling, prompt_tokens, max_tokens, max_price })
    }

    /// The most the request can cost at `prices`, commission included, within the ceiling.
    fn max_cost(&self, prices: &Prices, commission: Commission) -> NanoTon {
        commission.charge(prices.cost(self.prompt_tokens, self.max_tokens)).min(self.ceiling)
    }
}

/// An error answered to the app, OpenAI-style.
#[derive(Debug)]
pub struct AppError {
    status: u16,
    code: ErrorCode,
    message: String,
}

impl AppError {
    fn upstream(message: impl std::fmt::Display) -> Self {
        AppError { status: 502, code: ErrorCode::UpstreamError, message: message.to_string() }
    }

    fn invalid(message: impl Into<String>) -> Self {
        AppError { status: 400, code: ErrorCode::InvalidRequest, message: message.into() }
    }

    fn from_client(e: ClientError) -> Self {
        match &e {
            ClientError::Status { status, body, .. } => match ApiError::parse(body.as_bytes()) {
                Some(e) => AppError { status: *status, code: e.error.code, message: e.error.message },
                None => AppError { status: *status, code: ErrorCode::UpstreamError, message: body.clone() },
            },
            ClientError::Api { status, code, message } => {
                AppError { status: *status, code: *code, message: message.clone() }
            }
            _ => AppError { status: 502, code: ErrorCode::UpstreamError, message: e.to_string() },
        }
    }

    fn body(&self) -> ApiError {
        let kind = if self.status < 500 { "invalid_request_error" } else { "server_error" };
        ApiError::new(kind, self.code, self.message.clone())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        (status, [(header::CONTENT_TYPE, "application/json")], self.body().to_bytes()).into_response()
    }
}

pub fn router(runner: Arc<Runner>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(runner)
}

async fn models(State(r): State<Arc<Runner>>) -> Response {
    let ids: Vec<String> = match &r.upstream {
        Upstream::Direct { worker } => worker.verified().claims().model.iter().map(|m| m.id.clone()).collect(),
        Upstream::Proxies(set) => match proxy_models(&r, &set.snapshot()).await {
            Ok(ids) => ids,
            Err(e) => return e.into_response(),
        },
    };
    let data: Vec<Value> =
        ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "cocoon"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The models the first proxy in order that answers lists.
async fn proxy_models(r: &Runner, links: &[Arc<ProxyLink>]) -> Result<Vec<String>, AppError> {
    let mut last = String::from("no proxy");
    for link in r.usable_proxies(links)? {
        let uri = join(link.url(), "/v1/workers").map_err(AppError::upstream)?;
        let why = match r.http.get(uri, 4 << 20).await {
            Ok((s, body)) if s.is_success() => match serde_json::from_slice::<WorkersList>(&body) {
                Ok(list) => return Ok(list.models),
                Err(e) => format!("the proxy's worker list: {e}"),
            },
            Ok((s, _)) => format!("the proxy answered {s}"),
            Err(e) => e.to_string(),
        };
        link.failed(&why);
        last = format!("{}: {why}", link.url());
    }
    Err(AppError::upstream(last))
}

async fn chat_completions(State(r): State<Arc<Runner>>, req: Request) -> Response {
    complete(r, "/v1/chat/completions", req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(r): State<Arc<Runner>>, req: Request) -> Response {
    complete(r, "/v1/completions", req).await.unwrap_or_else(IntoResponse::into_response)
}

/// The prompt-cache key sent sealed to the worker: the app's own key (or
/// none) bound to this runner's signing key. The worker reuses a prompt
/// prefix only for requests with the same key, so this runner's requests share
/// their cached prefixes (a system prompt is not recomputed), an app can
/// split them further with OpenAI's `prompt_cache_key`, and no other client can
/// name a key that reaches them: a cache shared across clients would leak
/// through timing what they sent.
fn prompt_cache_key(key: &SigningKey, app: Option<&Value>) -> Result<String, AppError> {
    use sha2::{Digest, Sha256};
    let app = match app {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) if s.len() <= limits::MAX_PROMPT_CACHE_KEY => s.as_str(),
        Some(_) => {
            return Err(AppError::invalid(format!(
                "prompt_cache_key: expected a string of at most {} bytes",
                limits::MAX_PROMPT_CACHE_KEY
            )));
        }
    };
    let secret = Sha256::new().chain_update(b"cocoon prompt cache secret\0").chain_update(key.to_bytes()).finalize();
    let bound = Sha256::new().chain_update(secret).chain_update((app.len() as u64).to_le_bytes()).chain_update(app);
    Ok(hex::encode(bound.finalize()))
}

fn max_cost(r: &Runner, headers: &HeaderMap) -> Result<NanoTon, AppError> {
    match headers.get(APP_MAX_COST_HEADER) {
        None => Ok(r.default_max_cost),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AppError::invalid(format!("{APP_MAX_COST_HEADER}: expected a whole number of nanoTON"))),
    }
}

/// The app's price ceiling for this request, or the runner's.
fn max_price(r: &Runner, headers: &HeaderMap) -> Result<Option<Prices>, AppError> {
    match headers.get(APP_MAX_PRICE_HEADER) {
        None => Ok(r.max_price),
        Some(v) => v.to_str().ok().and_then(|s| s.parse::<Prices>().ok()).map(Some).ok_or_else(|| {
            AppError::invalid(format!(
                "{APP_MAX_PRICE_HEADER}: expected PROMPT,COMPLETION (whole nanoTON per 1,000 tokens each)"
            ))
        }),
    }
}

async fn complete(r: Arc<Runner>, path: &'static str, req: Request) -> Result<Response, AppError> {
    let max_cost = max_cost(&r, req.headers())?;
    let max_price = max_price(&r, req.headers())?;
    let body = http_body_util::Limited::new(req.into_body(), MAX_APP_BODY)
        .collect()
        .await
        .map_err(|_| AppError {
            status: 413,
            code: ErrorCode::BodyTooLarge,
            message: format!("expected at most {MAX_APP_BODY} bytes"),
        })?
        .to_bytes();
    let mut v: Value = serde_json::from_slice(&body).map_err(|e| AppError::invalid(format!("request body: {e}")))?;
    v["prompt_cache_key"] = json!(prompt_cache_key(&r.key, v.get("prompt_cache_key"))?);
    let model = v["model"].as_str().ok_or_else(|| AppError::invalid("`model` is required"))?.to_string();
    let streamed = v["stream"].as_bool().unwrap_or(false);
    let app_wants_usage = v["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    if streamed {
        // The runner needs the usage to check the receipt; the app sees it only if it asked.
        v["stream_options"] = json!({"include_usage": true});
    }
    let encoded = serde_json::to_vec(&v).expect("JSON encodes");
    let demand = Demand::of(max_cost, max_price, &v, encoded.len())?;
    let inner = InnerRequest::post_json(path, encoded);
    // The inner status comes first; an error inside the seal is passed on as it is.
    let Begun { sent, status, content_type, prefix } = r.begin(&model, &inner, &demand, streamed).await?;
    let Sent { stream, worker, max_cost, via } = sent;
    let billing = Billing {
        worker_prices: worker.verified().claims().prices.unwrap_or_default(),
        commission: via.as_ref().map(|p| p.commission()).unwrap_or_default(),
        max_cost,
        via_proxy: via.is_some(),
    };
    let worker_id = worker.id().to_string();
    if status != 200 || !streamed {
        // Whole answers (and errors), read to their end: check the receipt, add the cost.
        let body: Vec<u8> = prefix.concat();
        if status != 200 {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok((code, [(header::CONTENT_TYPE, content_type)], body).into_response());
        }
        let mut answer: Value =
            serde_json::from_slice(&body).map_err(|e| AppError::upstream(format!("the answer is not JSON: {e}")))?;
        let cost = billing.check(&stream, &worker, &answer["usage"])?;
        r.pay(via.as_deref(), cost.charge).await;
        answer["cocoon"] = cost.json(&worker_id, via.as_deref());
        return Ok(axum::Json(answer).into_response());
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(32);
    let relay = Relay { runner: r.clone(), via, stream, worker, billing, worker_id, app_wants_usage };
    tokio::spawn(relay.run(prefix, tx));
    let body = Body::from_stream(ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("valid response"))
}

/// What the answer cost, as checked against the receipt.
struct Cost {
    receipt: VerifiedReceipt,
    worker_cost: NanoTon,
    commission: NanoTon,
    charge: NanoTon,
}

impl Cost {
    fn json(&self, worker: &str, proxy: Option<&ProxyLink>) -> Value {
        json!({
            "worker": worker,
            "proxy": proxy.map(|p| p.url()),
            "cost_nanoton": self.charge.0,
            "worker_cost_nanoton": self.worker_cost.0,
            "commission_nanoton": self.commission.0,
            "receipt": {
                "prompt_tokens": self.receipt.prompt_tokens,
                "completion_tokens": self.receipt.completion_tokens,
                "request_hash": hex::encode(&self.receipt.request_hash),
                "issued_at": self.receipt.issued_at,
            },
        })
    }
}

struct Billing {
    worker_prices: Prices,
    commission: Commission,
    /// What the runner signed for this request: the charge never exceeds it.
    max_cost: NanoTon,
    via_proxy: bool,
}

impl Billing {
    /// Verifies the receipt (signature, request hash, model), that it agrees
    /// with the usage inside the seal, and that the proxy charged what the
    /// attested prices and its commission make.
    fn check(&self, stream: &ResponseStream, worker: &Worker, usage: &Value) -> Result<Cost, AppError> {
        let bad = |m: String| AppError { status: 502, code: ErrorCode::InvalidReceipt, message: m };
        let receipt = stream
            .receipt()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("the worker sent no receipt for a completed answer".into()))?;
        let claims = &worker.verified().claims();
        if let Some(m) = &claims.model
            && receipt.model_digest.as_ref().map(|d| d.as_slice()) != Some(m.digest.as_slice())
        {
            return Err(bad("the receipt names another model than the worker attested".into()));
        }
        let (p, c) = (usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64());
        if (p, c) != (Some(receipt.prompt_tokens as u64), Some(receipt.completion_tokens as u64)) {
            return Err(bad(format!(
                "the receipt counts {}+{} tokens but the answer reports {usage}",
                receipt.prompt_tokens, receipt.completion_tokens
            )));
        }
        let cost = self.worker_prices.cost(receipt.prompt_tokens, receipt.completion_tokens);
        let bill = self.commission.bill(cost, if self.via_proxy { self.max_cost } else { NanoTon(u64::MAX) });
        let (worker_cost, commission, charge) = (bill.worker_cost, bill.commission, bill.charge);
        if self.via_proxy {
            let charged = stream.trailer(media::CHARGE_HEADER).and_then(|v| v.parse::<u64>().ok());
            if charged != Some(charge.0) {
                return Err(AppError {
                    status: 502,
                    code: ErrorCode::ChargeMismatch,
                    message: format!(
                        "the proxy charged {charged:?} nanoTON; the receipt at the attested prices and commission makes {}",
                        charge.0
                    ),
                });
            }
        }
        Ok(Cost { receipt, worker_cost, commission, charge })
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A stream on its way to the app.
struct Relay {
    runner: Arc<Runner>,
    via: Option<Arc<ProxyLink>>,
    stream: ResponseStream,
    worker: Worker,
    billing: Billing,
    worker_id: String,
    app_wants_usage: bool,
}

impl Relay {
    /// Passes the events on as they arrive, those read before first; holds
    /// back the usage chunk and `[DONE]` until the receipt and the charge have
    /// been checked. A stream that breaks now ends with an error event.
    async fn run(self, prefix: Vec<Bytes>, tx: mpsc::Sender<Result<Bytes, Infallible>>) {
        let Relay { runner, via, mut stream, worker, billing, worker_id, app_wants_usage } = self;
        let mut parser = SseParser::default();
        let mut usage_chunk: Option<Value> = None;
        let fail = |message: String| {
            sse(&serde_json::to_value(ApiError::new("server_error", ErrorCode::StreamFailed, message))
                .expect("JSON encodes"))
        };
        let mut read = prefix.into_iter();
        loop {
            let bytes = match read.next() {
                Some(b) => b,
                None => match stream.next_event().await {
                    Ok(Some(ResponseEvent::Content(b))) => Bytes::from(b),
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Ok(fail(e.to_string()))).await;
                        return;
                    }
                },
            };
            let events = match parser.push(&bytes) {
                Ok(ev) => ev,
                Err(e) => {
                    let _ = tx.send(Ok(fail(e.to_string()))).await;
                    return;
                }
            };
            for data in events {
                if data == "[DONE]" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    let _ = tx.send(Ok(fail("a stream event is not JSON".into()))).await;
                    return;
                };
                if v["choices"].as_array().is_some_and(|c| c.is_empty()) && !v["usage"].is_null() {
                    usage_chunk = Some(v);
                    continue;
                }
                if tx.send(Ok(sse(&v))).await.is_err() {
                    return; // The app went away; dropping the stream stops the worker.
                }
            }
        }
        let usage = usage_chunk.as_ref().map(|u| u["usage"].clone()).unwrap_or(Value::Null);
        match billing.check(&stream, &worker, &usage) {
            Ok(cost) => {
                runner.pay(via.as_deref(), cost.charge).await;
                if app_wants_usage && let Some(mut u) = usage_chunk {
                    u["cocoon"] = cost.json(&worker_id, via.as_deref());
                    let _ = tx.send(Ok(sse(&u))).await;
                }
                let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
            }
            Err(e) => {
                warn!("{}", e.message);
                let _ = tx.send(Ok(sse(&serde_json::to_value(e.body()).expect("JSON encodes")))).await;
            }
        }
    }
}

/// Serves the runner on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runner: Arc<Runner>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Token-sized SSE writes must not wait for delayed ACKs (Nagle).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(runner)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_cache_keys_are_bound_to_the_runner_and_split_by_the_app() {
        let alice = SigningKey::from_bytes(&[1; 32]);
        let bob = SigningKey::from_bytes(&[2; 32]);
        let key = |k: &SigningKey, app: Option<Value>| prompt_cache_key(k, app.as_ref()).unwrap();
        assert_eq!(key(&alice, None), key(&alice, Some(Value::Null)));
        assert_eq!(key(&alice, None), key(&alice, None), "stable, so a runner's requests share prefixes");
        assert_ne!(key(&alice, None), key(&bob, None), "another client cannot reach alice's cache");
        assert_ne!(key(&alice, Some(json!("chat-1"))), key(&bob, Some(json!("chat-1"))));
        assert_ne!(key(&alice, Some(json!("chat-1"))), key(&alice, Some(json!("chat-2"))));
        assert_ne!(key(&alice, Some(json!(""))), key(&alice, Some(json!("chat-1"))));
        assert_eq!(key(&alice, None).len(), 64);
        assert!(prompt_cache_key(&alice, Some(&json!(7))).is_err());
        assert!(prompt_cache_key(&alice, Some(&json!("x".repeat(257)))).is_err());
    }
}
