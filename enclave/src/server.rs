//! HTTP/1.1 over the enclave's listener: keys, evidence, and the OHTTP gateway.
//!
//! Routes (the host shim maps its public endpoints onto these):
//! `GET /healthz`, `GET /.well-known/ohttp-keys`, `GET /attestation?nonce=HEX`,
//! `POST /ohttp` (`message/ohttp-req` or `message/ohttp-chunked-req`, each
//! with its `date` sealed inside: see `replay`), `GET /receipts/<hex hash>`
//! (the receipt of a stream cut short: see `cancelled`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use cocoon_runtime::{Accepted, HttpOptions, serve_http};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use cocoon_engine::Completion;
use cocoon_protocol::bhttp_msg::{InnerRequest, InnerResponse, StreamingResponseEncoder};
use cocoon_protocol::media::media_is;
use cocoon_protocol::ohttp::{ChunkedResponseSealer, OhttpError, ResponseSealer, encapsulated_key};
use cocoon_protocol::proxy_api::{ApiError, ErrorCode};
use cocoon_protocol::{NanoTon, Receipt, limits, media};

use crate::api::{self, ApiReply, ReplyBody};
use crate::fresh_evidence::FreshEvidenceError;
use crate::replay::ReplayError;
use crate::state::{EnclaveState, unix_now};
use crate::transport::Listener;

pub type Body = BoxBody<Bytes, Infallible>;

/// Slowest a client may be to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a sealed request body may take to arrive (the shim buffers bodies
/// before it forwards them, so this guards against a misbehaving host only).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown` resolves, then lets the requests in
/// progress (streams included) finish for up to `grace`.
pub async fn serve(
    listener: Listener,
    state: Arc<EnclaveState>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::spawn(state.fresh.clone().run());
    let trimmer = cocoon_runtime::MemoryTrimmer::default();
    trimmer.spawn();
    let options = HttpOptions {
        max_connections: Some(state.limits.max_connections),
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_buf_size: None,
    };
    let listener = Arc::new(listener);
    let accept = move || {
        let listener = listener.clone();
        async move { listener.accept().await.map(|s| (s, ())) }
    };
    let connection = |_: &_, ()| {
        let state = state.clone();
        Some(Accepted::service(hyper::service::service_fn(move |req| route(state.clone(), req))))
    };
    serve_http(accept, shutdown, options, grace, connection, move || trimmer.note_activity()).await?;
    Ok(())
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("static media type"));
    r
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", text.into())
}

/// A refusal outside the seal, with a code the proxy and the client decide
/// on ([`ErrorCode`]); the message is for people.
fn refusal(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response<Body> {
    full(status, "application/json", ApiError::new("enclave_error", code, message).to_bytes())
}

async fn route(state: Arc<EnclaveState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/healthz") => plain(StatusCode::OK, "ok\n"),
        ("GET", "/.well-known/ohttp-keys") => full(StatusCode::OK, media::OHTTP_KEYS, state.key_configs.clone()),
        ("GET", "/attestation") => attestation(&state, req.uri().query()).await,
        ("POST", "/ohttp") => ohttp(state, req).await,
        ("GET", p) if p.starts_with("/receipts/") => cancelled_receipt(&state, &p["/receipts/".len()..]),
        (_, "/healthz" | "/.well-known/ohttp-keys" | "/attestation" | "/ohttp") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => plain(StatusCode::NOT_FOUND, format!("no route for {path}\n")),
    };
    Ok(resp)
}

fn cancelled_receipt(state: &EnclaveState, hash: &str) -> Response<Body> {
    let Some(hash) = hex::decode(hash).ok().and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
        return plain(StatusCode::BAD_REQUEST, "expected /receipts/<64 hex digits of a sealed request's SHA-256>\n");
    };
    match state.cancelled.get(&hash) {
        Some(receipt) => {
            let mut r = plain(StatusCode::OK, "");
            if let Ok(v) = HeaderValue::from_str(&receipt) {
                r.headers_mut().insert(media::RECEIPT_HEADER, v);
            }
            r
        }
        None => plain(StatusCode::NOT_FOUND, "no stream of that request was cut short here\n"),
    }
}

async fn attestation(state: &Arc<EnclaveState>, query: Option<&str>) -> Response<Body> {
    let nonce = match cocoon_attestation::parse_nonce_query(query) {
        Ok(n) => n,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(nonce) = nonce else {
        return full(StatusCode::OK, media::EVIDENCE, state.cached_evidence.clone());
    };
    // One hardware report answers every verifier waiting (see `fresh_evidence`).
    match state.fresh.request(nonce).await {
        Ok(doc) => full(StatusCode::OK, media::EVIDENCE, doc),
        Err(e @ FreshEvidenceError::Busy(_)) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        Err(e) => {
            warn!("fresh evidence failed: {e}");
            plain(StatusCode::SERVICE_UNAVAILABLE, "the evidence producer failed; see the enclave's log\n")
        }
    }
}

async fn ohttp(state: Arc<EnclaveState>, req: Request<Incoming>) -> Response<Body> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let framing = if media_is(content_type, media::OHTTP_REQUEST) {
        Framing::Whole
    } else if media_is(content_type, media::OHTTP_CHUNKED_REQUEST) {
        Framing::Chunked
    } else {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!("expected {} or {}, found {content_type:?}", media::OHTTP_REQUEST, media::OHTTP_CHUNKED_REQUEST),
        );
    };
    // The proxy's cap travels in clear: it can only lower what the sealed one allows.
    let outer_cap = match req.headers().get(media::WORKER_CAP_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.parse::<NanoTon>().ok()) {
            Some(cap) => Some(cap),
            None => {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    format!("header {}: expected a whole number of nanoTON", media::WORKER_CAP_HEADER),
                );
            }
        },
    };
    let body = Limited::new(req.into_body(), limits::MAX_SEALED_REQUEST).collect();
    let sealed = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                format!("sealed request exceeds {} bytes", limits::MAX_SEALED_REQUEST),
            );
        }
        Ok(Err(e)) => {
            return refusal(StatusCode::BAD_REQUEST, ErrorCode::BodyError, format!("reading request body: {e}"));
        }
        Err(_) => {
            return refusal(StatusCode::REQUEST_TIMEOUT, ErrorCode::BodyTimeout, "request body arrived too slowly");
        }
    };
    let request_hash: [u8; 32] = Sha256::digest(&sealed).into();
    let enc = encapsulated_key(&sealed).unwrap_or_default();
    // A replay is refused before the costly open; a key is recorded only
    // once its request opened, so forged bytes cannot block the real one.
    if state.replay.already_seen(enc) {
        return replay_refused(&state, ReplayError::Replayed);
    }

    let request = Sealed { enc, outer_cap, request_hash };
    match framing {
        Framing::Chunked => match answer(&state, state.gateway.open_chunked_request(&sealed), &request).await {
            Ok((sealer, reply, billed)) => chunked_response(state, sealer, reply, billed),
            Err(refusal) => refusal,
        },
        Framing::Whole => match answer(&state, state.gateway.open_request(&sealed), &request).await {
            Ok((sealer, reply, billed)) => whole_response(&state, sealer, reply, billed).await,
            Err(refusal) => refusal,
        },
    }
}

/// How a sealed request and its answer are framed (RFC 9458, or chunked OHTTP).
#[derive(Clone, Copy)]
enum Framing {
    /// `message/ohttp-req`: one sealed answer, the receipt in a header.
    Whole,
    /// `message/ohttp-chunked-req`: sealed chunks as they are made, the receipt in a trailer.
    Chunked,
}

/// What the enclave knows of a sealed request before opening it.
struct Sealed<'a> {
    /// Its encapsulated key, which the replay guard records.
    enc: &'a [u8],
    /// The proxy's cap, in clear.
    outer_cap: Option<NanoTon>,
    request_hash: [u8; 32],
}

/// The opened request past the replay guard, answered under the smaller
/// cap; or the refusal, in clear.
async fn answer<S>(
    state: &EnclaveState,
    opened: Result<(Vec<u8>, S), OhttpError>,
    request: &Sealed<'_>,
) -> Result<(S, ApiReply, Billed), Response<Body>> {
    let (inner, sealer) = opened.map_err(refused)?;
    let inner = admitted(state, request.enc, &inner).map_err(|e| replay_refused(state, e))?;
    let (reply, cap) = inner_reply(state, inner, request.outer_cap).await;
    Ok((sealer, reply, Billed { request_hash: request.request_hash, cap }))
}

/// The whole answer sealed as one response, the receipt in a header.
async fn whole_response(
    state: &EnclaveState,
    sealer: ResponseSealer,
    reply: ApiReply,
    billed: Billed,
) -> Response<Body> {
    let Collected { status, content_type, body, completion } = collect(reply).await;
    let response = InnerResponse { status, headers: vec![("content-type".into(), content_type.into())], body };
    let sealed_response = match sealer.seal(&response.encode()) {
        Ok(s) => s,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("sealing the response: {e}\n")),
    };
    let mut resp = full(StatusCode::OK, media::OHTTP_RESPONSE, sealed_response);
    if let Some(c) = completion {
        let receipt = receipt_value(state, &billed, &c);
        resp.headers_mut().insert(media::RECEIPT_HEADER, receipt);
    }
    resp
}

/// A request that cannot be opened gets a 400 in clear: there is no key to
/// seal with. Its code tells the proxy to re-attest (perhaps the request was
/// sealed to keys this enclave no longer has).
fn refused(e: OhttpError) -> Response<Body> {
    info!("refused a sealed request: {e}");
    refusal(StatusCode::BAD_REQUEST, ErrorCode::CannotOpen, format!("cannot open the sealed request: {e}"))
}

/// Decodes the opened request and checks its date and key against the replay
/// guard; a refusal is a plain answer (the replayer cannot read a sealed one,
/// and the honest client needs to know).
fn admitted(state: &EnclaveState, enc: &[u8], inner: &[u8]) -> Result<Result<InnerRequest, String>, ReplayError> {
    let req = match InnerRequest::decode(inner) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("inner request: {e}"))),
    };
    state.replay.admit(enc, req.date()).map(|()| Ok(req))
}

fn replay_refused(state: &EnclaveState, e: ReplayError) -> Response<Body> {
    let (status, code) = match e {
        ReplayError::Replayed => (StatusCode::CONFLICT, ErrorCode::Replayed),
        ReplayError::Full { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy),
        ReplayError::Undated | ReplayError::BadDate(_) | ReplayError::Stale { .. } => {
            (StatusCode::BAD_REQUEST, ErrorCode::Stale)
        }
    };
    info!("refused a sealed request: {e}");
    let mut r = refusal(status, code, e.to_string());
    // The enclave's own clock, so that a client refused as stale sees the skew.
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(state.replay.clock().now())) {
        r.headers_mut().insert(header::DATE, v);
    }
    r
}

/// The reply and the cost cap it was generated under.
async fn inner_reply(
    state: &EnclaveState,
    inner: Result<InnerRequest, String>,
    outer_cap: Option<NanoTon>,
) -> (ApiReply, Option<NanoTon>) {
    let req = match inner {
        Ok(req) => req,
        Err(e) => return (ApiReply::error(400, "invalid_request_error", ErrorCode::BadMessage, e), outer_cap),
    };
    match api::applied_cap(&req, outer_cap) {
        Ok(cap) => (api::handle(state.engine.clone(), state.claims.prices, req, cap).await, cap),
        Err(reply) => (reply, outer_cap),
    }
}

/// What a receipt names besides the tokens: the request and the cap applied to it.
struct Billed {
    request_hash: [u8; 32],
    cap: Option<NanoTon>,
}

/// Collects a reply into one body (for non-chunked OHTTP).
async fn collect(reply: ApiReply) -> Collected {
    let (status, content_type) = (reply.status, reply.content_type);
    match reply.body {
        ReplyBody::Full(body, completion) => Collected { status, content_type, body, completion },
        ReplyBody::Stream { mut events, done } => {
            let mut body = Vec::new();
            while let Some(e) = events.recv().await {
                body.extend(e);
            }
            Collected { status, content_type, body, completion: done.await.ok().flatten() }
        }
    }
}

/// A whole reply: its status, media type and body, and the generation's usage.
struct Collected {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    completion: Option<Completion>,
}

fn receipt_value(state: &EnclaveState, billed: &Billed, c: &Completion) -> HeaderValue {
    let receipt = Receipt {
        request_hash: ByteBuf::from(billed.request_hash.to_vec()),
        model_id: state.claims.model.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        model_digest: state.claims.model.as_ref().map(|m| m.digest.clone()),
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        cost_cap: billed.cap,
        issued_at: unix_now(),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(state.receipts.sign(&receipt));
    HeaderValue::from_str(&b64).expect("base64 is a valid header value")
}

/// Streams a chunked OHTTP response: each SSE event is sealed and sent as it
/// is produced; the receipt follows as an HTTP trailer.
fn chunked_response(
    state: Arc<EnclaveState>,
    mut sealer: ChunkedResponseSealer,
    reply: ApiReply,
    billed: Billed,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    tokio::spawn(async move {
        let head = StreamingResponseEncoder::head(reply.status, &[("content-type", reply.content_type)]);
        // Sends everything; false when the client went away first.
        let sent = async |tx: &mpsc::Sender<Frame<Bytes>>, sealer: &mut ChunkedResponseSealer, body: ReplyBody| {
            match body {
                ReplyBody::Full(body, c) => {
                    let mut first = head;
                    first.extend(StreamingResponseEncoder::content(&body));
                    (forward(tx, sealer.seal_chunk(&first)).await, Completed::Now(c))
                }
                ReplyBody::Stream { mut events, done } => {
                    if !forward(tx, sealer.seal_chunk(&head)).await {
                        return (false, Completed::Later(done));
                    }
                    while let Some(event) = events.recv().await {
                        // Returning drops `events`, which tells the engine the client is gone.
                        if !forward(tx, sealer.seal_chunk(&StreamingResponseEncoder::content(&event))).await {
                            return (false, Completed::Later(done));
                        }
                    }
                    (true, Completed::Later(done))
                }
            }
        };
        let (delivered, completed) = sent(&tx, &mut sealer, reply.body).await;
        let completion = match completed {
            Completed::Now(c) => c,
            Completed::Later(done) => done.await.ok().flatten(),
        };
        let delivered = delivered && forward(&tx, sealer.seal_final(&StreamingResponseEncoder::end())).await;
        let Some(c) = completion else { return };
        let receipt = receipt_value(&state, &billed, &c);
        if delivered {
            let mut trailers = HeaderMap::new();
            trailers.insert(media::RECEIPT_HEADER, receipt.clone());
            if tx.send(Frame::trailers(trailers)).await.is_ok() {
                return;
            }
        }
        // Cut short: the tokens generated are metered all the same, once the proxy asks.
        if let Ok(r) = receipt.to_str() {
            state.cancelled.keep(billed.request_hash, r.to_owned());
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media::OHTTP_CHUNKED_RESPONSE));
    r.headers_mut().insert(header::TRAILER, HeaderValue::from_static(media::RECEIPT_HEADER));
    r
}

/// A generation's usage: known with a whole body, or when its stream ends.
enum Completed {
    Now(Option<Completion>),
    Later(tokio::sync::oneshot::Receiver<Option<Completion>>),
}

/// Sends one sealed piece; false when sealing failed or the receiver is gone.
async fn forward(tx: &mpsc::Sender<Frame<Bytes>>, sealed: Result<Vec<u8>, cocoon_protocol::ohttp::OhttpError>) -> bool {
    match sealed {
        Ok(bytes) => tx.send(Frame::data(Bytes::from(bytes))).await.is_ok(),
        Err(e) => {
            warn!("sealing a response chunk failed: {e}");
            false
        }
    }
}
