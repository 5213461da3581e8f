//! `cocoon serve`: the client runner, an OpenAI-compatible API on loopback.
//!
//! An app talks to it as to any OpenAI server. For each request the runner
//! asks the proxy for a worker, verifies that worker's evidence under the
//! client's own policy (cached per evidence digest), seals the request to the
//! worker's key, signs the proxy's charge authorisation, streams the answer
//! back, and checks the receipt and the charge before it reports the cost.
//! A worker that fails before answering is replaced transparently. With
//! `--worker URL` it talks to one worker directly, without a proxy.

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
use cocoon_protocol::price::ProxyTerms;
use cocoon_protocol::proxy_api::{ApiError, ErrorCode, RouteAnswer, RouteRequest, WorkersList};
use cocoon_protocol::{Commission, NanoTon, Prices, VerifiedReceipt, limits, media};
use cocoon_runtime::LockExt;

use crate::allowlist::Watched;
use crate::chat::SseParser;
use crate::endorsements::EndorsementSources;
use crate::http::{HttpClient, join};
use crate::worker::{ClientError, ResponseStream, Route, Worker, fetch_verified};

/// Workers tried for one request before the runner gives up.
const MAX_ATTEMPTS: usize = 4;
/// Longest a request waits for a worker with free capacity.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
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
    Proxy { url: String, commission: Commission, account: [u8; 32] },
    Direct { worker: Arc<Worker> },
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
    /// Pays the proxy through a channel, when the runner was given one.
    payer: Option<crate::pay::ChannelPayer>,
    /// The network's registry: only the proxy, images and models it lists are used.
    allowlist: Option<Arc<Watched>>,
    /// The most a worker may charge per 1,000 prompt and completion tokens
    /// when the app does not say: other workers are never used.
    max_price: Option<Prices>,
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
        let http = HttpClient::default();
        let (status, terms_bytes) = http.get(join(proxy, "/v1/terms")?, 16 << 10).await?;
        if !status.is_success() {
            return Err(ClientError::Status { what: "proxy terms", status: status.as_u16(), body: String::new() });
        }
        let terms: ProxyTerms = serde_json::from_slice(&terms_bytes)
            .map_err(|e| ClientError::Answer { what: "the proxy's terms", reason: e.to_string() })?;
        let (_, verified) = fetch_verified(&http, proxy, &policy, &sources, true).await?;
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
        info!(proxy, commission_ppm = commission.ppm(), account = %terms.account_key, "proxy verified");
        let account = *verified.receipt_key();
        Ok(Runner {
            upstream: Upstream::Proxy { url: proxy.trim_end_matches('/').to_string(), commission, account },
            policy,
            sources,
            key,
            default_max_cost,
            http,
            verified: Mutex::new(HashMap::new()),
            payer: None,
            allowlist: None,
            max_price: None,
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

    /// Uses only what the registry `watched` lists: refused now unless it lists
    /// this proxy with the commission its terms state and the endpoint it was
    /// reached at; every request checks the newest read again (a removal stops
    /// the runner's use of the proxy without a restart), and each worker's
    /// evidence must match a listed image and name a listed model.
    pub fn with_registry(mut self, watched: Arc<Watched>) -> Result<Self, ClientError> {
        self.allowlist = Some(watched);
        self.check_proxy_listed()?;
        Ok(self)
    }

    /// The proxy is listed as it presents itself (when a registry is used); a
    /// worker talked to directly serves a listed model.
    fn check_proxy_listed(&self) -> Result<(), ClientError> {
        let (Some(w), Upstream::Proxy { url, commission, account }) = (&self.allowlist, &self.upstream) else {
            if let (Some(w), Upstream::Direct { worker }) = (&self.allowlist, &self.upstream) {
                w.current()?.check_worker(worker.verified())?;
            }
            return Ok(());
        };
        let list = w.current()?;
        let entry = list.check_proxy(account, commission.ppm(), url)?;
        if let Some(payer) = &self.payer
            && payer.params().payee != entry.wallet
        {
            return Err(ClientError::ListedWallet {
                listed: entry.wallet.to_string(),
                channel: payer.params().payee.to_string(),
            });
        }
        Ok(())
    }

    /// Pays the proxy through the channel in `channel_file` (see [`crate::pay`]).
    pub fn with_channel(mut self, channel_file: &std::path::Path) -> Result<Self, ClientError> {
        let Upstream::Proxy { account, .. } = &self.upstream else {
            return Err(ClientError::ChannelWithoutProxy);
        };
        let payer = crate::pay::ChannelPayer::open(channel_file, &self.key, account)?;
        info!(channel = %payer.params().address().map(|a| a.to_hex()).unwrap_or_default(), "paying the proxy through a channel");
        self.payer = Some(payer);
        self.check_proxy_listed()?;
        Ok(self)
    }

    /// Shows the proxy this runner's channel (see [`crate::pay::ChannelPayer::register`]).
    pub async fn register_channel(&self) -> Result<(), ClientError> {
        match (&self.payer, &self.upstream) {
            (Some(payer), Upstream::Proxy { url, .. }) => payer.register(&self.key, &self.http, url).await,
            _ => Ok(()),
        }
    }

    /// After a verified charge: the voucher for it, when paying through a channel.
    async fn pay(&self, charge: NanoTon) {
        if let (Some(payer), Upstream::Proxy { url, .. }) = (&self.payer, &self.upstream) {
            payer.pay(charge, &self.key, &self.http, url).await;
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
            payer: None,
            allowlist: None,
            max_price: None,
        })
    }

    fn commission(&self) -> Commission {
        match &self.upstream {
            Upstream::Proxy { commission, .. } => *commission,
            Upstream::Direct { .. } => Commission::default(),
        }
    }

    /// Asks the proxy for a worker of `model` and verifies its evidence (cached by digest).
    async fn routed_worker(
        &self,
        proxy: &str,
        model: &str,
        exclude: &[String],
        demand: &Demand,
    ) -> Result<Worker, AppError> {
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
        let req = http::Request::post(join(proxy, "/v1/route").map_err(AppError::upstream)?)
            .header(header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("valid request");
        let resp = self.http.send(req).await.map_err(AppError::upstream)?;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), limits::MAX_EVIDENCE * 2)
            .collect()
            .await
            .map_err(|e| AppError::upstream(format!("reading the route answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(match ApiError::parse(&bytes) {
                Some(e) => AppError { status: status.as_u16(), code: e.error.code, message: e.error.message },
                None => AppError {
                    status: status.as_u16(),
                    code: ErrorCode::WorkerUnavailable,
                    message: format!("the proxy refused to route (HTTP {status})"),
                },
            });
        }
        let answer: RouteAnswer =
            serde_json::from_slice(&bytes).map_err(|e| AppError::upstream(format!("route answer: {e}")))?;
        let id = answer.worker.id.as_str();
        let evidence = base64::engine::general_purpose::STANDARD
            .decode(&answer.evidence)
            .map_err(|_| AppError::upstream("route answer: evidence is not base64"))?;
        let route = Route::ViaProxy { proxy: proxy.to_string(), worker_id: id.to_string() };
        let refused =
            |m: String| AppError { status: 502, code: ErrorCode::WorkerRefused, message: format!("worker {id}: {m}") };
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

    /// Routes, seals and sends; replaces a worker that fails before answering.
    async fn open_stream(
        &self,
        model: &str,
        inner: &InnerRequest,
        demand: &Demand,
        failed: &[String],
    ) -> Result<Sent, AppError> {
        self.check_proxy_listed().map_err(|e| AppError {
            status: 503,
            code: ErrorCode::ProxyNotListed,
            message: format!("the registry no longer allows this proxy: {e}"),
        })?;
        let mut exclude: Vec<String> = failed.to_vec();
        let mut last = None;
        let busy_until = tokio::time::Instant::now() + BUSY_WAIT;
        let mut backoff = std::time::Duration::from_millis(25);
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let worker = match &self.upstream {
                Upstream::Direct { worker } => {
                    Worker::with_verified(worker.route().clone(), self.http.clone(), worker.verified().clone())
                }
                Upstream::Proxy { url, .. } => match self.routed_worker(url, model, &exclude, demand).await {
                    Ok(w) => w,
                    // Every worker is busy (or the ones left were excluded): nothing was
                    // sent yet, so wait a little for capacity instead of failing the app.
                    Err(e) if e.code == ErrorCode::NoWorkerAvailable && tokio::time::Instant::now() < busy_until => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                        // Workers that failed this very request stay out.
                        exclude.truncate(failed.len());
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            attempts += 1;
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
                if matches!(self.upstream, Upstream::Direct { .. }) {
                    return Err(AppError { status: 402, code: ErrorCode::PriceAboveCeiling, message });
                }
                warn!(worker = %id, "the proxy routed above the price ceiling; excluded: {message}");
                exclude.push(id);
                last = Some(message);
                continue;
            }
            let max_cost = demand.max_cost(&prices, self.commission());
            let budget = self.commission().worker_budget(max_cost);
            let mut sealed = inner.clone();
            sealed.headers.push((media::MAX_WORKER_COST_HEADER.into(), budget.0.to_string()));
            let via_proxy = matches!(self.upstream, Upstream::Proxy { .. });
            let key = &self.key;
            let result = worker
                .stream_with(&sealed, |hash| {
                    if !via_proxy {
                        return Vec::new();
                    }
                    ClientAuthorization::sign(key, hash, max_cost).header_values().into()
                })
                .await;
            match result {
                Ok(stream) => return Ok(Sent { stream, worker, max_cost }),
                Err(ClientError::Retryable { worker: id, message, next_worker }) => {
                    warn!(worker = %id, "failing over: {message}");
                    // A worker that restarted with new keys is named again: re-seal to it.
                    if next_worker.as_deref() != Some(id.as_str()) {
                        exclude.push(id);
                    }
                    last = Some(message);
                }
                Err(e) => return Err(AppError::from_client(e)),
            }
        }
        Err(AppError {
            status: 503,
            code: ErrorCode::NoWorkerAvailable,
            message: format!("{MAX_ATTEMPTS} workers failed; last: {}", last.unwrap_or_default()),
        })
    }
}

struct Sent {
    stream: ResponseStream,
    worker: Worker,
    /// The maximum cost signed for this request.
    max_cost: NanoTon,
}

/// Most times a request is sent to another worker because its worker failed
/// before the app saw anything of the answer.
const MAX_UNSEEN_RETRIES: usize = 3;

/// An answer as far as it is read before anything goes to the app: its
/// head, and its content up to the first token of a stream (a whole answer,
/// or an error, is read to its end). A worker that fails before then is
/// replaced without the app noticing, and paid for once: the proxy charges
/// nothing for a stream whose worker failed.
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
        loop {
            let mut sent = self.open_stream(model, inner, demand, &failed).await?;
            match read_unseen(&mut sent.stream, streamed).await {
                Ok((status, content_type, prefix)) => return Ok(Begun { sent, status, content_type, prefix }),
                Err(ClientError::WorkerFailed { message, .. }) if failed.len() < MAX_UNSEEN_RETRIES => {
                    let id = sent.worker.id().to_string();
                    warn!(worker = %id, "the worker failed before the app saw its answer; sending it to another: {message}");
                    failed.push(id);
                }
                Err(e) => return Err(AppError::from_client(e)),
            }
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
        Upstream::Proxy { url, .. } => {
            let uri = match join(url, "/v1/workers") {
                Ok(u) => u,
                Err(e) => return AppError::upstream(e).into_response(),
            };
            match r.http.get(uri, 4 << 20).await {
                Ok((s, body)) if s.is_success() => match serde_json::from_slice::<WorkersList>(&body) {
                    Ok(list) => list.models,
                    Err(e) => return AppError::upstream(format!("the proxy's worker list: {e}")).into_response(),
                },
                Ok((s, _)) => return AppError::upstream(format!("the proxy answered {s}")).into_response(),
                Err(e) => return AppError::upstream(e).into_response(),
            }
        }
    };
    let data: Vec<Value> =
        ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "cocoon"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
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
    let Sent { stream, worker, max_cost } = sent;
    let billing = Billing {
        worker_prices: worker.verified().claims().prices.unwrap_or_default(),
        commission: r.commission(),
        max_cost,
        via_proxy: matches!(r.upstream, Upstream::Proxy { .. }),
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
        r.pay(cost.charge).await;
        answer["cocoon"] = cost.json(&worker_id);
        return Ok(axum::Json(answer).into_response());
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(32);
    let relay = Relay { runner: r.clone(), stream, worker, billing, worker_id, app_wants_usage };
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
    fn json(&self, worker: &str) -> Value {
        json!({
            "worker": worker,
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
        let Relay { runner, mut stream, worker, billing, worker_id, app_wants_usage } = self;
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
                runner.pay(cost.charge).await;
                if app_wants_usage && let Some(mut u) = usage_chunk {
                    u["cocoon"] = cost.json(&worker_id);
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
