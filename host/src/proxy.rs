//! The shim's HTTP front and its forwarding to the enclave.
//!
//! Request bodies (sealed requests, at most 1 MiB) are received whole in
//! the shim, under a minimum rate, before a slot towards the enclave is
//! taken, so slow or stalled uploads never hold the enclave's capacity.
//! Responses stream through frame by frame, trailers (the usage receipt of
//! streamed answers) included. Evidence, keys and health have their own
//! capacity, apart from sealed requests.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use cocoon_protocol::media::{self, media_is};
use cocoon_runtime::pump::{self, next_frame, pumped_body};
use cocoon_runtime::{Accepted, HttpOptions, MemoryTrimmer, serve_http};

use crate::admission::{Admission, Conn, RequestGuard};
use crate::metrics::{LimitLabels, Metrics, RequestLabels};
use crate::upload::{self, UploadRules};
use crate::upstream::Upstream;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body forwarded.
    pub max_body: usize,
    /// Sealed requests forwarded to the enclave at once; past it the shim answers 503.
    pub max_in_flight: usize,
    /// Evidence, key and health requests forwarded at once (apart from sealed requests).
    pub max_control_in_flight: usize,
    /// Client connections open at once; at the limit the longest-idle one is closed.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_in_flight_per_source: usize,
    /// Bytes of request bodies buffered at once, all clients together.
    pub max_buffered: usize,
    /// Slowest average rate at which a request body may arrive, after `body_grace`.
    pub min_body_rate: u64,
    pub body_grace: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for the enclave's response head (a non-streamed answer
    /// arrives only after generation).
    pub response_timeout: Duration,
    /// Longest silence between two frames of a response body.
    pub idle_timeout: Duration,
    /// Longest wait for a request's headers, on a new or a kept-alive connection.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: cocoon_protocol::limits::MAX_SEALED_REQUEST,
            max_in_flight: 1024,
            max_control_in_flight: 2048,
            max_connections: 4096,
            max_connections_per_source: 1024,
            max_in_flight_per_source: 256,
            max_buffered: 256 << 20,
            min_body_rate: 8 << 10,
            body_grace: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

pub struct Shim {
    pub upstream: Upstream,
    /// The reference values the operator launched with (`make measure` output).
    pub measurements: Option<Bytes>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    in_flight: Arc<Semaphore>,
    control_in_flight: Arc<Semaphore>,
    upload_budget: Arc<Semaphore>,
    trimmer: MemoryTrimmer,
}

impl Shim {
    pub fn new(upstream: Upstream, measurements: Option<Bytes>, limits: Limits) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        for (limit, v) in [
            ("max_body", limits.max_body),
            ("max_in_flight", limits.max_in_flight),
            ("max_control_in_flight", limits.max_control_in_flight),
            ("max_connections", limits.max_connections),
            ("max_connections_per_source", limits.max_connections_per_source),
            ("max_in_flight_per_source", limits.max_in_flight_per_source),
            ("max_buffered", limits.max_buffered),
            ("min_body_rate", limits.min_body_rate as usize),
        ] {
            metrics.limits.get_or_create(&LimitLabels { limit }).set(v as i64);
        }
        let admission = Admission::new(
            limits.max_connections,
            limits.max_connections_per_source,
            limits.max_in_flight_per_source,
            metrics.clone(),
        );
        let budget_units = (limits.max_buffered / upload::BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Shim {
            upstream,
            measurements,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            control_in_flight: Arc::new(Semaphore::new(limits.max_control_in_flight)),
            upload_budget: Arc::new(Semaphore::new(budget_units)),
            limits,
            metrics,
            admission,
            trimmer: MemoryTrimmer::default(),
        })
    }
}

pub fn router(shim: Arc<Shim>) -> Router {
    Router::new()
        .route("/v1/ohttp", post(ohttp))
        .route("/.well-known/ohttp-keys", get(keys))
        .route("/v1/attestation", get(attestation))
        .route("/v1/receipts/{hash}", get(receipt))
        .route("/v1/measurements", get(measurements))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shim)
}

/// The connection a request arrived on (a request extension).
#[derive(Clone)]
struct OnConn(Arc<Conn>);

/// Serves until `shutdown` resolves, then lets requests in progress (streams
/// included) finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    shim: Arc<Shim>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let app = router(shim.clone());
    shim.trimmer.spawn();
    // The admission caps connections (closing the longest-idle one), not a queue.
    let options = HttpOptions {
        max_connections: None,
        header_read_timeout: shim.limits.header_read_timeout,
        max_buf_size: Some(64 << 10),
    };
    let listener = Arc::new(listener);
    let accept = move || {
        let listener = listener.clone();
        async move { listener.accept().await }
    };
    let connection = |stream: &tokio::net::TcpStream, peer: std::net::SocketAddr| {
        let conn = match shim.admission.admit(peer.ip()) {
            Ok(c) => c,
            Err(refusal) => {
                shim.metrics.reject(refusal.reason());
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, on) = (app.clone(), OnConn(conn.conn.clone()));
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(on.clone());
            app.clone().oneshot(req)
        });
        // Displaced while idle: a request that raced in still finishes.
        let displaced = conn.conn.clone();
        let close = Box::pin(async move { displaced.close.notified().await });
        Some(Accepted { service, close, hold: Box::new(conn) })
    };
    let trimmer = shim.trimmer.clone();
    serve_http(accept, shutdown, options, grace, connection, move || trimmer.note_activity()).await?;
    Ok(())
}

/// Marks the request in progress until its response body ends.
fn in_progress(shim: &Shim, req: &Request) -> Option<RequestGuard> {
    req.extensions().get::<OnConn>().map(|c| shim.admission.request(&c.0))
}

/// Carries `guard` until the response body is done with.
fn guarded(r: Response, guard: Option<RequestGuard>) -> Response {
    match guard {
        None => r,
        Some(g) => r.map(|b| Body::new(Guarded { inner: b, _guard: g })),
    }
}

struct Guarded {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.into()).into_response()
}

fn counted(shim: &Shim, endpoint: &'static str, r: Response) -> Response {
    shim.metrics.requests.get_or_create(&RequestLabels { endpoint, status: r.status().as_u16() }).inc();
    r
}

async fn ohttp(State(shim): State<Arc<Shim>>, req: Request) -> Response {
    let mut guard = in_progress(&shim, &req);
    let r = ohttp_inner(&shim, req, &mut guard).await;
    guarded(counted(&shim, "ohttp", r), guard)
}

async fn ohttp_inner(shim: &Arc<Shim>, req: Request, guard: &mut Option<RequestGuard>) -> Response {
    // The request headers the enclave reads: the media type and the proxy's cost cap.
    let passed: Vec<(&'static str, HeaderValue)> =
        REQUEST_HEADERS.iter().filter_map(|name| req.headers().get(*name).map(|v| (*name, v.clone()))).collect();
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !media_is(ct, media::OHTTP_REQUEST) && !media_is(ct, media::OHTTP_CHUNKED_REQUEST) {
        shim.metrics.reject("media_type");
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected {} or {}, found {ct:?}\n", media::OHTTP_REQUEST, media::OHTTP_CHUNKED_REQUEST),
        );
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shim.limits.max_body as u64) {
        shim.metrics.reject("body_too_large");
        let msg =
            format!("request body of {} bytes exceeds the limit of {}\n", declared.unwrap_or(0), shim.limits.max_body);
        return text(StatusCode::PAYLOAD_TOO_LARGE, msg);
    }
    if let Some(g) = guard.as_mut()
        && !shim.admission.take_source_slot(g)
    {
        shim.metrics.reject("source_in_flight");
        return text(StatusCode::TOO_MANY_REQUESTS, "too many requests in flight from your address; retry later\n");
    }
    let rules = UploadRules {
        max_body: shim.limits.max_body,
        min_rate: shim.limits.min_body_rate,
        grace: shim.limits.body_grace,
    };
    shim.metrics.uploads.inc();
    let received = upload::receive(req.into_body(), rules, &shim.upload_budget).await;
    shim.metrics.uploads.dec();
    // A client's upload failing is the client's error: a 4xx, never the enclave's health.
    let received = match received {
        Ok(r) => r,
        Err(e) => {
            shim.metrics.reject(e.reason());
            let status = match e {
                upload::UploadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                upload::UploadError::TooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
                upload::UploadError::Aborted { .. } => StatusCode::BAD_REQUEST,
                upload::UploadError::BudgetFull => StatusCode::SERVICE_UNAVAILABLE,
            };
            return text(status, format!("{e}\n"));
        }
    };
    let Ok(permit) = shim.in_flight.clone().try_acquire_owned() else {
        shim.metrics.reject("in_flight_full");
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight; retry later\n");
    };
    shim.metrics.bytes_to_enclave.inc_by(received.bytes.len() as u64);
    let body = Body::new(Full::new(received.bytes.clone()));
    // The body's share of the upload budget is held until the enclave has answered its head.
    let answer = forward(shim, permit, Method::POST, "/ohttp".into(), passed, body).await;
    drop(received);
    answer
}

/// A slot for an evidence, key or health request, apart from sealed requests;
/// the busy answer when none is free.
async fn with_control_slot(shim: &Arc<Shim>, path: String) -> Response {
    match shim.control_in_flight.clone().try_acquire_owned() {
        Ok(permit) => forward(shim, permit, Method::GET, path, Vec::new(), Body::empty()).await,
        Err(_) => {
            shim.metrics.reject("control_in_flight_full");
            text(StatusCode::SERVICE_UNAVAILABLE, "too many evidence and health requests in flight; retry later\n")
        }
    }
}

async fn control(shim: &Arc<Shim>, guard: Option<RequestGuard>, endpoint: &'static str, path: String) -> Response {
    let r = with_control_slot(shim, path).await;
    guarded(counted(shim, endpoint, r), guard)
}

async fn keys(State(shim): State<Arc<Shim>>, req: Request) -> Response {
    let guard = in_progress(&shim, &req);
    control(&shim, guard, "ohttp-keys", "/.well-known/ohttp-keys".into()).await
}

/// The receipt of a stream cut short (the proxy meters it).
async fn receipt(
    State(shim): State<Arc<Shim>>,
    axum::extract::Path(hash): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return counted(&shim, "receipts", text(StatusCode::BAD_REQUEST, "expected 64 hex digits\n"));
    }
    let guard = in_progress(&shim, &req);
    drop(req);
    control(&shim, guard, "receipts", format!("/receipts/{hash}")).await
}

async fn attestation(State(shim): State<Arc<Shim>>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    if query.len() > 512 {
        return counted(&shim, "attestation", text(StatusCode::URI_TOO_LONG, "query too long\n"));
    }
    let path = if query.is_empty() { "/attestation".to_string() } else { format!("/attestation?{query}") };
    let guard = in_progress(&shim, &req);
    drop(req);
    control(&shim, guard, "attestation", path).await
}

async fn measurements(State(shim): State<Arc<Shim>>) -> Response {
    let r = match &shim.measurements {
        Some(m) => ([(header::CONTENT_TYPE, "application/json")], m.clone()).into_response(),
        None => text(StatusCode::NOT_FOUND, "the operator gave no measurements file (--measurements)\n"),
    };
    counted(&shim, "measurements", r)
}

async fn healthz(State(shim): State<Arc<Shim>>, req: Request) -> Response {
    let guard = in_progress(&shim, &req);
    drop(req);
    let r = with_control_slot(&shim, "/healthz".into()).await;
    let (status, enclave) = if r.status().is_success() {
        (StatusCode::OK, "ok".to_string())
    } else {
        let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (StatusCode::SERVICE_UNAVAILABLE, String::from_utf8_lossy(&body).trim().to_string())
    };
    let body = serde_json::json!({"shim": "ok", "enclave": enclave}).to_string();
    let r = counted(&shim, "healthz", (status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
    guarded(r, guard)
}

async fn metrics(State(shim): State<Arc<Shim>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shim.metrics.render())
        .into_response()
}

/// Headers of a sealed request that the enclave reads.
const REQUEST_HEADERS: [&str; 2] = ["content-type", media::WORKER_CAP_HEADER];

/// Headers of the enclave's response that the client needs.
const PASSED_HEADERS: [&str; 5] = ["content-type", "trailer", media::RECEIPT_HEADER, "cache-control", "date"];

/// Sends one request to the enclave and streams its answer back. Failures
/// reaching the enclave are logged with their detail; the client's answer
/// names none of the host's addresses or OS errors.
async fn forward(
    shim: &Arc<Shim>,
    permit: OwnedSemaphorePermit,
    method: Method,
    path: String,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Body,
) -> Response {
    match send_to_enclave(shim, method, path, headers, body).await {
        Ok(resp) => relay(shim, permit, resp),
        Err(refused) => refused,
    }
}

/// One request on a fresh connection to the enclave, with the `forwarding`
/// gauge raised while it is answered (lowered by [`relay`] when the answer ends).
async fn send_to_enclave(
    shim: &Arc<Shim>,
    method: Method,
    path: String,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Body,
) -> Result<http::Response<Incoming>, Response> {
    let io = shim.upstream.connect(shim.limits.connect_timeout).await.map_err(|e| {
        warn!("enclave unavailable: {e}");
        shim.metrics.enclave_up.set(0);
        text(StatusCode::SERVICE_UNAVAILABLE, "enclave unavailable; retry later\n")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| {
        warn!("enclave connection failed: {e}");
        shim.metrics.enclave_up.set(0);
        text(StatusCode::BAD_GATEWAY, "enclave connection failed\n")
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("enclave connection ended: {e}");
        }
    });
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "enclave")
        // Streamed answers carry their receipt in a trailer.
        .header(header::TE, "trailers");
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let req = builder.body(body).expect("valid request parts");
    let forwarding = &shim.metrics.forwarding;
    forwarding.inc();
    match tokio::time::timeout(shim.limits.response_timeout, sender.send_request(req)).await {
        Ok(Ok(r)) => {
            shim.metrics.enclave_up.set(1);
            Ok(r)
        }
        Ok(Err(e)) => {
            forwarding.dec();
            warn!("enclave did not answer: {e}");
            shim.metrics.enclave_up.set(0);
            Err(text(StatusCode::BAD_GATEWAY, "the enclave did not answer\n"))
        }
        Err(_) => {
            forwarding.dec();
            Err(text(StatusCode::GATEWAY_TIMEOUT, "the enclave did not answer in time\n"))
        }
    }
}

/// The enclave's answer with the headers the client needs, its body pumped
/// frame by frame so that a silent enclave is cut off after the idle
/// timeout, and the slot (`permit`) held as long as the body.
fn relay(shim: &Arc<Shim>, permit: OwnedSemaphorePermit, resp: http::Response<Incoming>) -> Response {
    let (parts, mut upstream) = resp.into_parts();
    let mut out = Response::builder().status(parts.status);
    for name in PASSED_HEADERS {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v);
        }
    }
    let (tx, body) = pumped_body();
    let idle = shim.limits.idle_timeout;
    let from_enclave = shim.metrics.bytes_from_enclave.clone();
    let forwarding = shim.metrics.forwarding.clone();
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            match next_frame(&mut upstream, idle).await {
                pump::Upstream::Frame(frame) => {
                    if let Some(d) = frame.data_ref() {
                        from_enclave.inc_by(d.len() as u64);
                    }
                    if !tx.send(frame).await {
                        break;
                    }
                }
                pump::Upstream::End => break,
                pump::Upstream::Broken(e) => {
                    warn!("enclave stream failed: {e}");
                    tx.fail("the enclave's stream failed").await;
                    break;
                }
                pump::Upstream::Silent => {
                    tx.fail("the enclave's stream went silent").await;
                    break;
                }
            }
        }
        forwarding.dec();
    });
    out.body(Body::new(body)).expect("valid response parts")
}
