//! The shim's HTTP front and its forwarding to the enclave.
//!
//! Bodies stream through in both directions frame by frame, trailers (the
//! usage receipt of streamed answers) included; nothing is buffered whole.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use cocoon_protocol::media;

use crate::metrics::{Metrics, RequestLabels};
use crate::upstream::Upstream;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body forwarded.
    pub max_body: usize,
    /// Requests forwarded at once; past it the shim answers 503.
    pub max_in_flight: usize,
    /// Client connections open at once; past it new ones wait to be accepted.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// Longest wait for the enclave's response head (a non-streamed answer
    /// arrives only after generation).
    pub response_timeout: Duration,
    /// Longest silence between two frames of a response body.
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: cocoon_protocol::limits::MAX_SEALED_REQUEST,
            max_in_flight: 1024,
            max_connections: 4096,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

pub struct Shim {
    pub upstream: Upstream,
    /// The reference values the operator launched with (`make measure` output).
    pub measurements: Option<Bytes>,
    pub limits: Limits,
    pub metrics: Metrics,
    in_flight: Arc<Semaphore>,
}

impl Shim {
    pub fn new(upstream: Upstream, measurements: Option<Bytes>, limits: Limits) -> Arc<Self> {
        let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
        Arc::new(Shim { upstream, measurements, limits, metrics: Metrics::default(), in_flight })
    }
}

pub fn router(shim: Arc<Shim>) -> Router {
    Router::new()
        .route("/v1/ohttp", post(ohttp))
        .route("/.well-known/ohttp-keys", get(keys))
        .route("/v1/attestation", get(attestation))
        .route("/v1/measurements", get(measurements))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shim)
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, shim: Arc<Shim>) -> anyhow::Result<()> {
    let app = router(shim.clone());
    let connections = Arc::new(Semaphore::new(shim.limits.max_connections));
    loop {
        let permit = connections.clone().acquire_owned().await?;
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = shim.limits.header_read_timeout;
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!("client connection ended: {e}");
            }
            drop(permit);
        });
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
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shim.limits.max_body as u64) {
        let msg =
            format!("request body of {} bytes exceeds the limit of {}\n", declared.unwrap_or(0), shim.limits.max_body);
        return counted(&shim, "ohttp", text(StatusCode::PAYLOAD_TOO_LARGE, msg));
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let to_enclave = shim.metrics.bytes_to_enclave.clone();
    let body = http_body_util::Limited::new(req.into_body(), shim.limits.max_body).map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            to_enclave.inc_by(d.len() as u64);
        }
        f
    });
    let r = forward(&shim, Method::POST, "/ohttp".into(), content_type, Body::new(body)).await;
    counted(&shim, "ohttp", r)
}

async fn keys(State(shim): State<Arc<Shim>>) -> Response {
    let r = forward(&shim, Method::GET, "/.well-known/ohttp-keys".into(), None, Body::empty()).await;
    counted(&shim, "ohttp-keys", r)
}

async fn attestation(State(shim): State<Arc<Shim>>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    if query.len() > 512 {
        return counted(&shim, "attestation", text(StatusCode::URI_TOO_LONG, "query too long\n"));
    }
    let path = if query.is_empty() { "/attestation".to_string() } else { format!("/attestation?{query}") };
    let r = forward(&shim, Method::GET, path, None, Body::empty()).await;
    counted(&shim, "attestation", r)
}

async fn measurements(State(shim): State<Arc<Shim>>) -> Response {
    let r = match &shim.measurements {
        Some(m) => ([(header::CONTENT_TYPE, "application/json")], m.clone()).into_response(),
        None => text(StatusCode::NOT_FOUND, "the operator gave no measurements file (--measurements)\n"),
    };
    counted(&shim, "measurements", r)
}

async fn healthz(State(shim): State<Arc<Shim>>) -> Response {
    let r = forward(&shim, Method::GET, "/healthz".into(), None, Body::empty()).await;
    let (status, enclave) = if r.status().is_success() {
        (StatusCode::OK, "ok".to_string())
    } else {
        let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (StatusCode::SERVICE_UNAVAILABLE, String::from_utf8_lossy(&body).trim().to_string())
    };
    let body = serde_json::json!({"shim": "ok", "enclave": enclave}).to_string();
    counted(&shim, "healthz", (status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn metrics(State(shim): State<Arc<Shim>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shim.metrics.render())
        .into_response()
}

/// Headers of the enclave's response that the client needs.
const PASSED_HEADERS: [&str; 4] = ["content-type", "trailer", media::RECEIPT_HEADER, "cache-control"];

async fn forward(
    shim: &Arc<Shim>,
    method: Method,
    path: String,
    content_type: Option<HeaderValue>,
    body: Body,
) -> Response {
    let Ok(permit) = shim.in_flight.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight; retry later\n");
    };
    let io = match shim.upstream.connect(shim.limits.connect_timeout).await {
        Ok(io) => io,
        Err(e) => {
            shim.metrics.enclave_up.set(0);
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("enclave unavailable: {e}\n"));
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("enclave connection failed: {e}\n")),
    };
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
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    let req = builder.body(body).expect("valid request parts");
    let resp = match tokio::time::timeout(shim.limits.response_timeout, sender.send_request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            shim.metrics.enclave_up.set(0);
            return text(StatusCode::BAD_GATEWAY, format!("enclave did not answer: {e}\n"));
        }
        Err(_) => return text(StatusCode::GATEWAY_TIMEOUT, "enclave did not answer in time\n"),
    };
    shim.metrics.enclave_up.set(1);

    let (parts, upstream_body) = resp.into_parts();
    let mut out = Response::builder().status(parts.status);
    for name in PASSED_HEADERS {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v);
        }
    }
    // Pump frames through a small channel so that a silent enclave is cut off
    // after the idle timeout, and the in-flight permit lives as long as the body.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let idle = shim.limits.idle_timeout;
    let from_enclave = shim.metrics.bytes_from_enclave.clone();
    let in_flight = shim.metrics.in_flight.clone();
    in_flight.inc();
    tokio::spawn(async move {
        let _permit = permit;
        let mut body = upstream_body;
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        from_enclave.inc_by(d.len() as u64);
                    }
                    if tx.send(Ok(frame)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let _ = tx.send(Err(std::io::Error::other(format!("enclave stream failed: {e}")))).await;
                    break;
                }
                Err(_) => {
                    let _ = tx.send(Err(std::io::Error::other("enclave stream went silent"))).await;
                    break;
                }
            }
        }
        in_flight.dec();
    });
    out.body(Body::new(StreamBody::new(ReceiverStream::new(rx)))).expect("valid response parts")
}
