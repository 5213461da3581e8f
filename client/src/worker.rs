//! A verified worker and the sealed exchanges with it.

use std::collections::VecDeque;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use cocoon_attestation::{AttestationError, Policy, VerifiedWorker, assess};
use cocoon_protocol::bhttp_msg::{BhttpError, InnerRequest, InnerResponse, ResponseEvent, StreamingResponseDecoder};
use cocoon_protocol::ohttp::{ChunkedResponseOpener, ClientRequest, OhttpError};
use cocoon_protocol::proxy_api::{ApiError, ErrorCode};
use cocoon_protocol::receipt::ReceiptError;
use cocoon_protocol::{Receipt, VerifiedReceipt, limits, media};

use crate::endorsements::{EndorsementError, EndorsementSources};
use crate::http::{HttpClient, HttpError, join};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(#[from] crate::http::HttpError),
    #[error("{what} answered HTTP {status}: {body}")]
    Status { what: &'static str, status: u16, body: String },
    #[error("evidence refused: {0}")]
    Attestation(#[from] AttestationError),
    #[error("verification inputs: {0}")]
    Endorsements(#[from] EndorsementError),
    #[error("sealed exchange: {0}")]
    Ohttp(#[from] OhttpError),
    #[error("sealed response: {0}")]
    Bhttp(#[from] BhttpError),
    #[error("receipt: {0}")]
    Receipt(#[from] ReceiptError),
    #[error("{what} (HTTP {status}, {code}): {message}", what = describe_api_error(code))]
    Api { status: u16, code: ErrorCode, message: String },
    #[error("worker {worker} is unavailable ({message}); the proxy suggests {next}", next = next_worker.as_deref().unwrap_or("no other worker"))]
    Retryable { worker: String, message: String, next_worker: Option<String> },
    /// An answer that does not parse as what it must be.
    #[error("{what}: {reason}")]
    Answer { what: &'static str, reason: String },
    #[error("the proxy's evidence does not bind the terms it serves (config digest differs)")]
    TermsNotBound,
    #[error("the proxy's terms name account key {terms}, its evidence {evidence}")]
    TermsAccount { terms: String, evidence: String },
    #[error("the proxy's terms: {0}")]
    Commission(#[from] cocoon_protocol::price::CommissionError),
    #[error(transparent)]
    NotListed(#[from] crate::allowlist::AllowlistError),
    #[error("the registry lists {listed} as this proxy's wallet, but the channel pays {channel}")]
    ListedWallet { listed: String, channel: String },
    #[error("channel file {path}: {reason}")]
    ChannelFile { path: String, reason: String },
    #[error("none of the {tried} proxies could be used: {reasons}")]
    NoProxy { tried: usize, reasons: String },
    #[error(
        "no channel to the proxy at {proxy}, and the channel budget left ({left} nanoTON) is less than a deposit ({deposit} nanoTON)"
    )]
    ChannelBudget { proxy: String, deposit: u64, left: u64 },
    #[error("opening a channel to the proxy at {proxy}: {reason}")]
    ChannelOpen { proxy: String, reason: String },
    #[error("a payment channel pays a proxy; this runner talks to a worker directly")]
    ChannelWithoutProxy,
    #[error("signing a voucher: {0}")]
    Voucher(#[from] cocoon_ton::TonError),
    #[error("the worker sent no usage receipt for a completed answer")]
    NoReceipt,
    /// The proxy ended the stream because the worker's broke off (nothing
    /// was charged for it).
    #[error("the worker failed during the answer ({message}), reached through {via}")]
    WorkerFailed { via: String, message: String },
}

/// Where sealed requests for a worker go: its own shim, or a proxy that forwards them.
#[derive(Debug, Clone)]
pub enum Route {
    Direct { base: String },
    ViaProxy { proxy: String, worker_id: String },
}

/// A worker whose evidence passed the policy. Its keys come from that evidence.
pub struct Worker {
    route: Route,
    http: HttpClient,
    verified: VerifiedWorker,
}

/// Fetches a worker's evidence document, for a new random nonce when `fresh`;
/// returns it with that nonce. Verifying it is the caller's next step.
pub async fn fetch_evidence(
    http: &HttpClient,
    base: &str,
    fresh: bool,
) -> Result<(Vec<u8>, Option<Vec<u8>>), ClientError> {
    let nonce = fresh.then(|| {
        let mut n = [0u8; 32];
        getrandom::fill(&mut n).expect("the operating system's random source failed");
        n.to_vec()
    });
    let path = match &nonce {
        Some(n) => format!("/v1/attestation?nonce={}", hex::encode(n)),
        None => "/v1/attestation".to_string(),
    };
    let uri = join(base, &path).map_err(ClientError::Http)?;
    let (status, body) = http.get(uri, limits::MAX_EVIDENCE).await.map_err(ClientError::Http)?;
    if !status.is_success() {
        return Err(ClientError::Status {
            what: "attestation endpoint",
            status: status.as_u16(),
            body: text_of(&body),
        });
    }
    Ok((body.to_vec(), nonce))
}

/// Fetches the evidence of the party at `base` (fresh for a new nonce when
/// `fresh`) and verifies it under `policy`; returns the document as served
/// and what passed. A refusal is `ClientError::Attestation`.
pub async fn fetch_verified(
    http: &HttpClient,
    base: &str,
    policy: &Policy,
    sources: &EndorsementSources,
    fresh: bool,
) -> Result<(Vec<u8>, VerifiedWorker), ClientError> {
    let (evidence, nonce) = fetch_evidence(http, base, fresh).await?;
    let now = unix_now();
    let endorsements = sources.endorsements(http, &evidence, now).await?;
    let verified = assess(&evidence, policy, nonce.as_deref(), now, &endorsements).into_result()?;
    Ok((evidence, verified))
}

pub use cocoon_runtime::unix_now;

fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(1024)]).trim().to_string()
}

impl Worker {
    /// Fetches the worker's evidence (fresh for a new nonce when `fresh`) and
    /// verifies it under `policy`. Nothing else is sent before this succeeds.
    pub async fn attest(base: &str, policy: &Policy, fresh: bool) -> Result<Self, ClientError> {
        Self::attest_with(base, policy, &EndorsementSources::default(), fresh).await
    }

    /// [`Worker::attest`] with the collateral and certificate sources that hardware evidence needs.
    pub async fn attest_with(
        base: &str,
        policy: &Policy,
        sources: &EndorsementSources,
        fresh: bool,
    ) -> Result<Self, ClientError> {
        let http = HttpClient::default();
        let (_, verified) = fetch_verified(&http, base, policy, sources, fresh).await?;
        Ok(Worker { route: Route::Direct { base: base.to_string() }, http, verified })
    }

    /// A worker from evidence obtained elsewhere (a proxy's route answer),
    /// verified here under the caller's own policy.
    pub async fn from_evidence(
        route: Route,
        http: HttpClient,
        evidence: &[u8],
        policy: &Policy,
        sources: &EndorsementSources,
    ) -> Result<Self, ClientError> {
        let now = unix_now();
        let endorsements = sources.endorsements(&http, evidence, now).await?;
        let verified = assess(evidence, policy, None, now, &endorsements).into_result()?;
        Ok(Worker { route, http, verified })
    }

    /// A worker whose evidence the caller verified already (kept in a cache by evidence digest).
    pub fn with_verified(route: Route, http: HttpClient, verified: VerifiedWorker) -> Self {
        Worker { route, http, verified }
    }

    pub fn verified(&self) -> &VerifiedWorker {
        &self.verified
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The worker's id at its proxy, or its URL when reached directly.
    pub fn id(&self) -> &str {
        match &self.route {
            Route::ViaProxy { worker_id, .. } => worker_id,
            Route::Direct { base } => base,
        }
    }

    fn client_request(&self) -> Result<ClientRequest, ClientError> {
        Ok(ClientRequest::new(self.verified.key_config())?)
    }

    /// The URL sealed requests for this worker go to (its shim's, or the proxy's).
    fn source(&self) -> String {
        match &self.route {
            Route::Direct { base } => base.clone(),
            Route::ViaProxy { proxy, .. } => proxy.clone(),
        }
    }

    async fn post(
        &self,
        content_type: &'static str,
        sealed: Vec<u8>,
        extra: &[(&'static str, String)],
    ) -> Result<http::Response<Incoming>, ClientError> {
        let (base, worker_id) = match &self.route {
            Route::Direct { base } => (base, None),
            Route::ViaProxy { proxy, worker_id } => (proxy, Some(worker_id)),
        };
        let uri = join(base, "/v1/ohttp").map_err(ClientError::Http)?;
        let mut req = Request::post(uri).header(header::CONTENT_TYPE, content_type).header(header::TE, "trailers");
        if let Some(id) = worker_id {
            req = req.header(media::WORKER_HEADER, id);
        }
        for (name, value) in extra {
            req = req.header(*name, value);
        }
        let req = req.body(Full::new(Bytes::from(sealed))).expect("valid request parts");
        let resp = self.http.send(req).await.map_err(ClientError::Http)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let next = resp.headers().get(media::RETRY_WORKER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = Limited::new(resp.into_body(), 4096).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if let Some(failover) = retryable(status, next, &body, worker_id) {
                return Err(failover);
            }
            return Err(ClientError::Status { what: "gateway", status, body: text_of(&body) });
        }
        Ok(resp)
    }

    /// One sealed request and its whole sealed response (`message/ohttp-req`).
    pub async fn send(&self, request: &InnerRequest) -> Result<(InnerResponse, Option<VerifiedReceipt>), ClientError> {
        let (sealed, opener) = self.client_request()?.seal(&dated(request).encode())?;
        let request_hash: [u8; 32] = Sha256::digest(&sealed).into();
        let resp = self.post(media::OHTTP_REQUEST, sealed, &[]).await?;
        let receipt = verify_receipt(resp.headers(), &request_hash, self.verified.receipt_key())?;
        let body = Limited::new(resp.into_body(), limits::MAX_SEALED_RESPONSE)
            .collect()
            .await
            .map_err(|e| HttpError::Body { uri: self.source(), detail: e.to_string() })?
            .to_bytes();
        let inner = InnerResponse::decode(&opener.open(&body)?)?;
        Ok((inner, receipt))
    }

    /// One sealed request with a streamed, chunk-sealed response (`message/ohttp-chunked-req`).
    pub async fn stream(&self, request: &InnerRequest) -> Result<ResponseStream, ClientError> {
        self.stream_with(request, |_| Vec::new()).await
    }

    /// [`Worker::stream`] with extra clear headers computed from the sealed
    /// request's hash (a proxy's client authorisation).
    pub async fn stream_with(
        &self,
        request: &InnerRequest,
        headers_for: impl FnOnce(&[u8; 32]) -> Vec<(&'static str, String)>,
    ) -> Result<ResponseStream, ClientError> {
        let sealed = self.seal_stream(request)?;
        let extra = headers_for(&sealed.request_hash);
        self.send_sealed(sealed, &extra).await
    }

    /// Seals `request` for a streamed answer without sending it: for a client
    /// whose charge authorisation comes from elsewhere (an app's sponsor),
    /// which needs the sealed request's hash first.
    pub fn seal_stream(&self, request: &InnerRequest) -> Result<SealedStream, ClientError> {
        let (bytes, opener) = self.client_request()?.seal_chunked(&dated(request).encode())?;
        let request_hash: [u8; 32] = Sha256::digest(&bytes).into();
        Ok(SealedStream { bytes, opener, request_hash })
    }

    /// Sends a request sealed by [`Worker::seal_stream`] with `extra` clear headers.
    pub async fn send_sealed(
        &self,
        sealed: SealedStream,
        extra: &[(&'static str, String)],
    ) -> Result<ResponseStream, ClientError> {
        let SealedStream { bytes, opener, request_hash } = sealed;
        let resp = self.post(media::OHTTP_CHUNKED_REQUEST, bytes, extra).await?;
        Ok(ResponseStream {
            body: resp.into_body(),
            state: StreamState::Open(opener),
            decoder: StreamingResponseDecoder::new(),
            queue: VecDeque::new(),
            trailers: None,
            request_hash,
            receipt_key: *self.verified.receipt_key(),
            source: self.source(),
        })
    }
}

/// A request sealed for a streamed answer, not sent yet.
pub struct SealedStream {
    bytes: Vec<u8>,
    opener: ChunkedResponseOpener,
    request_hash: [u8; 32],
}

impl SealedStream {
    /// SHA-256 of the sealed bytes: what a charge authorisation signs and the receipt names.
    pub fn request_hash(&self) -> [u8; 32] {
        self.request_hash
    }
}

/// What an OpenAI error code from the worker means, in words.
fn describe_api_error(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::Busy => "the worker is busy; retry later or choose another worker",
        ErrorCode::MaxCostExceeded => "the answer would cost more than the maximum allowed",
        ErrorCode::ModelNotFound => "the worker does not serve this model",
        ErrorCode::ModelNotLoaded => "the worker has no model loaded",
        ErrorCode::InvalidRequest | ErrorCode::BadMessage => "the worker refused the request as invalid",
        ErrorCode::NotFound | ErrorCode::MethodNotAllowed => "the worker has no such endpoint",
        ErrorCode::EngineFailed => "the worker's engine failed",
        _ => "the worker refused the request",
    }
}

/// An OpenAI error body from the worker as a client error; `status` is the
/// inner status, or, for an error inside a stream that began with 200, the
/// status its code stands for.
pub fn api_error(status: u16, body: &[u8]) -> ClientError {
    let (code, message) = match ApiError::parse(body) {
        Some(e) => (e.error.code, e.error.message),
        None => (ErrorCode::Unknown, text_of(body)),
    };
    let status = match (status, code) {
        (200, ErrorCode::Busy) => 429,
        (200, ErrorCode::MaxCostExceeded) => 402,
        (200, ErrorCode::InvalidRequest | ErrorCode::BadMessage) => 400,
        (200, _) => 500,
        (s, _) => s,
    };
    ClientError::Api { status, code, message }
}

/// The request dated now: the enclave refuses undated requests and those
/// outside its replay window.
fn dated(request: &InnerRequest) -> InnerRequest {
    let mut r = request.clone();
    r.stamp(SystemTime::now());
    r
}

/// A proxy's failover answer: 503 naming the next worker, or a JSON error marked retryable.
fn retryable(status: u16, next: Option<String>, body: &[u8], worker: Option<&String>) -> Option<ClientError> {
    let worker = worker?.clone();
    let error = ApiError::parse(body);
    let flagged = error.as_ref().is_some_and(|e| e.error.retryable);
    if !(flagged || (status == 503 && next.is_some())) {
        return None;
    }
    let next_worker = next.or_else(|| error.as_ref().and_then(|e| e.error.next_worker.clone()));
    let message = error.map(|e| e.error.message).unwrap_or_else(|| text_of(body));
    Some(ClientError::Retryable { worker, message, next_worker })
}

fn verify_receipt(
    headers: &HeaderMap,
    request_hash: &[u8; 32],
    key: &[u8; 32],
) -> Result<Option<VerifiedReceipt>, ClientError> {
    let Some(v) = headers.get(media::RECEIPT_HEADER) else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .map_err(|e| ClientError::Receipt(ReceiptError::Malformed(format!("not base64: {e}"))))?;
    let receipt = Receipt::verify(&bytes, key)?;
    receipt.expect_request(request_hash)?;
    Ok(Some(receipt))
}

/// The events of a streamed sealed response, decrypted as they arrive.
pub struct ResponseStream {
    body: Incoming,
    state: StreamState,
    decoder: StreamingResponseDecoder,
    queue: VecDeque<ResponseEvent>,
    trailers: Option<HeaderMap>,
    request_hash: [u8; 32],
    receipt_key: [u8; 32],
    /// Where the answer comes from, for errors.
    source: String,
}

/// Where a streamed response is: chunks still to open, or authenticated to its end.
enum StreamState {
    Open(ChunkedResponseOpener),
    Finished,
}

impl ResponseStream {
    /// The next event; `None` after the authenticated end of the stream.
    pub async fn next_event(&mut self) -> Result<Option<ResponseEvent>, ClientError> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let StreamState::Open(opener) = &mut self.state else { return Ok(None) };
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let plain = opener.push(&data)?;
                        self.queue.extend(self.decoder.push(&plain)?);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => {
                    return Err(ClientError::Http(HttpError::Body { uri: self.source.clone(), detail: e.to_string() }));
                }
                None => {
                    if let Some(why) = self.trailer(media::WORKER_FAILED_TRAILER) {
                        return Err(ClientError::WorkerFailed { via: self.source.clone(), message: why.to_string() });
                    }
                    let StreamState::Open(opener) = std::mem::replace(&mut self.state, StreamState::Finished) else {
                        unreachable!("matched Open above");
                    };
                    self.queue.extend(self.decoder.push(&opener.finish()?)?);
                    if !self.decoder.is_done() {
                        return Err(BhttpError::Incomplete.into());
                    }
                }
            }
        }
    }

    /// SHA-256 of the sealed request, which the receipt must name.
    pub fn request_hash(&self) -> [u8; 32] {
        self.request_hash
    }

    /// A trailer's value, once the stream has ended.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }

    /// The verified receipt, once the stream has ended (it travels as a trailer).
    pub fn receipt(&self) -> Result<Option<VerifiedReceipt>, ClientError> {
        match &self.trailers {
            Some(t) => verify_receipt(t, &self.request_hash, &self.receipt_key),
            None => Ok(None),
        }
    }
}
