//! The proxy's HTTP API.
//!
//! | endpoint | what |
//! | --- | --- |
//! | `POST /v1/workers` | a worker asks to join (`{"url": ...}`); admitted only if its fresh evidence passes |
//! | `GET /v1/workers` | admitted workers: model, prices, capacity, load, reputation, evidence age |
//! | `POST /v1/route` | `{"model", "exclude", "gpu", "prompt_tokens", "max_tokens", "max_price"}` → the pick (by price, load and reputation), its evidence and prices |
//! | `GET /v1/market` | per model: the lowest, median and highest price of the workers up, with capacity and load |
//! | `POST /v1/ohttp` | a sealed request for the worker named in `cocoon-worker`, signed by the client |
//! | `GET /v1/terms` | the proxy's price terms (the bytes its evidence binds) |
//! | `POST /v1/vouchers` | a client's voucher on its channel to this proxy (`[ton]` only) |
//! | `GET /v1/payouts?payee=ADDR` | a voucher for everything a worker's payout address earned (`[ton]` only) |
//! | `GET /v1/attestation?nonce=HEX` | the proxy's own evidence |
//! | `GET /healthz`, `GET /metrics` | liveness; Prometheus metrics |

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::warn;

use cocoon_protocol::proxy_api::{ErrorCode, JoinRequest, RouteAnswer, RouteRequest, RoutedWorker, WorkersList};
use cocoon_protocol::{limits, media};

use crate::app::App;
use crate::config::secs;
use crate::forward;
use crate::metrics::WorkerLabels;
use crate::registry::{AdmissionError, Want, now_ms};
use crate::response::api_error;
use cocoon_runtime::{Accepted, HttpOptions, LockExt, serve_http};

/// Largest JSON body of the small endpoints (`/v1/route`, `/v1/workers`).
const MAX_SMALL_BODY: usize = 16 << 10;
/// Most GPU chips a route request may name.
const MAX_GPU_CLASSES: usize = 8;
/// Most workers a route request may exclude.
const MAX_EXCLUDE: usize = 64;
/// Most prompt tokens a route request is ranked for (more are taken as this many).
const MAX_ROUTE_PROMPT_TOKENS: u32 = 1 << 24;

pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/v1/workers", get(list_workers).post(join))
        .route("/v1/route", post(route))
        .route("/v1/market", get(market))
        .route("/v1/ohttp", post(forward::ohttp))
        .route("/v1/terms", get(terms))
        .route("/v1/vouchers", post(vouchers))
        .route("/v1/payouts", get(payouts))
        .route("/v1/attestation", get(attestation))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(app);
    with_safety(routes)
}

/// The layers every route gets: a handler's panic becomes that request's 500.
fn with_safety(routes: Router) -> Router {
    routes.layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// A handler panicked: a 500 for that request alone (the locks it held are
/// taken over by the next request, see `cocoon_runtime::sync`).
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::InternalError,
        "the proxy failed on this request".into(),
        true,
    )
}

async fn small_json<T: for<'de> Deserialize<'de>>(req: Request) -> Result<T, Response> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_SMALL_BODY).collect().await.map_err(|_| {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("expected at most {MAX_SMALL_BODY} bytes"),
            false,
        )
    })?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, format!("request body: {e}"), false))
}

fn no_payments() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        ErrorCode::NoPayments,
        "this proxy takes no payments on TON (no [ton] in its config)".into(),
        false,
    )
}

fn payment_error(e: crate::payments::PaymentError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_error(status, e.code(), e.to_string(), status == StatusCode::SERVICE_UNAVAILABLE)
}

async fn vouchers(State(app): State<Arc<App>>, req: Request) -> Response {
    let r = match &app.payments {
        None => no_payments(),
        Some(p) => match small_json::<crate::payments::VoucherBody>(req).await {
            Err(r) => r,
            Ok(body) => match p.accept_voucher(body).await {
                Ok(a) => axum::Json(a).into_response(),
                Err(e) => {
                    app.metrics.refuse(e.code().as_str());
                    payment_error(e)
                }
            },
        },
    };
    app.count("vouchers", &r);
    r
}

async fn payouts(State(app): State<Arc<App>>, axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    let Some(p) = &app.payments else { return no_payments() };
    let payee = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("payee="))
        .map(|v| urlencoding::decode(v).map(|c| c.into_owned()).unwrap_or_default());
    let Some(payee) = payee else {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayee,
            "expected ?payee=<TON address>".into(),
            false,
        );
    };
    let payee = match cocoon_ton::channel::parse_address("payee", &payee) {
        Ok(a) => a,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayee, e.to_string(), false),
    };
    let r = match p.worker_voucher(&payee).await {
        Ok(Some(held)) => axum::Json(held).into_response(),
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::NothingEarned,
            format!("{payee} has earned nothing here"),
            false,
        ),
        Err(e) => payment_error(e),
    };
    app.count("payouts", &r);
    r
}

async fn join(State(app): State<Arc<App>>, req: Request) -> Response {
    let r = join_inner(&app, req).await;
    app.count("workers_join", &r);
    r
}

async fn join_inner(app: &Arc<App>, req: Request) -> Response {
    {
        let minute = now_ms() / 60_000;
        let mut j = app.joins.locked();
        if j.0 != minute {
            *j = (minute, 0);
        }
        if j.1 >= app.limits.joins_per_minute {
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("at most {} joins a minute; retry later", app.limits.joins_per_minute),
                false,
            );
        }
        j.1 += 1;
    }
    let j: JoinRequest = match small_json(req).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    match app.registry.admit(&j.url).await {
        Ok(w) => (StatusCode::CREATED, axum::Json(app.registry.describe(&w))).into_response(),
        Err(e) => {
            let status = match e {
                AdmissionError::Url(_) => StatusCode::BAD_REQUEST,
                AdmissionError::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
                AdmissionError::Fetch(_) | AdmissionError::Timeout(_) => StatusCode::BAD_GATEWAY,
                AdmissionError::Refused(_) | AdmissionError::NoModel | AdmissionError::NotListed(_) => {
                    StatusCode::FORBIDDEN
                }
            };
            api_error(status, ErrorCode::NotAdmitted, e.to_string(), false)
        }
    }
}

async fn list_workers(State(app): State<Arc<App>>) -> Response {
    let data: Vec<_> = app.registry.all().iter().map(|w| app.registry.describe(w)).collect();
    let r = axum::Json(WorkersList { object: "list".into(), data, models: app.registry.models() }).into_response();
    app.count("workers_list", &r);
    r
}

async fn route(State(app): State<Arc<App>>, req: Request) -> Response {
    let r = route_inner(&app, req).await;
    app.count("route", &r);
    r
}

async fn route_inner(app: &Arc<App>, req: Request) -> Response {
    let r: RouteRequest = match small_json(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if r.exclude.len() > MAX_EXCLUDE
        || r.model.len() > limits::MAX_CLAIM_TEXT
        || r.gpu.len() > MAX_GPU_CLASSES
        || r.gpu.iter().any(|g| g.len() > 32)
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!(
                "expected a model name of at most {} bytes, at most {MAX_EXCLUDE} exclusions \
                 and at most {MAX_GPU_CLASSES} GPU chips of at most 32 bytes",
                limits::MAX_CLAIM_TEXT
            ),
            false,
        );
    }
    let typical = app.registry.typical_request();
    let want = Want {
        exclude: &r.exclude,
        gpus: &r.gpu,
        prompt_tokens: r.prompt_tokens.unwrap_or(typical.prompt_tokens).min(MAX_ROUTE_PROMPT_TOKENS),
        completion_tokens: r.max_tokens.unwrap_or(typical.completion_tokens).min(limits::MAX_TOKENS_CAP),
        max_price: r.max_price,
    };
    let Some(pick) = app.registry.pick(&r.model, &want) else {
        if let Some(ceiling) = r.max_price
            && let Some(cheapest) = app.registry.cheapest_above_ceiling(&r.model, &want)
        {
            app.metrics.refuse(ErrorCode::PriceAboveCeiling.as_str());
            return api_error(
                StatusCode::PAYMENT_REQUIRED,
                ErrorCode::PriceAboveCeiling,
                format!(
                    "every worker serving {:?} that could take this request charges more than the ceiling of \
                     {} and {} nanoTON per 1,000 prompt and completion tokens; the cheapest available now charges \
                     {} and {}",
                    r.model,
                    ceiling.prompt_per_1k.0,
                    ceiling.completion_per_1k.0,
                    cheapest.prompt_per_1k.0,
                    cheapest.completion_per_1k.0
                ),
                false,
            );
        }
        let served = app.registry.models();
        let (status, code, msg) = if served.contains(&r.model) && !r.gpu.is_empty() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NoWorkerAvailable,
                format!(
                    "no worker serving {:?} with verified GPUs of {} is up, free and not excluded",
                    r.model,
                    r.gpu.join(" or ")
                ),
            )
        } else if served.contains(&r.model) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NoWorkerAvailable,
                format!("every worker serving {:?} is busy, down or excluded", r.model),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                ErrorCode::ModelNotFound,
                format!("no admitted worker serves {:?}; served: {served:?}", r.model),
            )
        };
        return api_error(status, code, msg, false);
    };
    pick.worker.note_routed(now_ms());
    let a = &pick.attested;
    axum::Json(RouteAnswer {
        worker: RoutedWorker {
            id: pick.worker.id.clone(),
            model: a.model_id().to_string(),
            prices: a.prices(),
            payout_address: a.payout_address().map(str::to_owned),
            capacity: a.capacity(),
        },
        evidence: base64::engine::general_purpose::STANDARD.encode(a.evidence()),
        commission_ppm: app.commission.ppm(),
        alternatives: pick.alternatives,
    })
    .into_response()
}

async fn terms(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], Bytes::from(app.identity.terms_bytes.clone())).into_response()
}

async fn attestation(State(app): State<Arc<App>>, req: Request) -> Response {
    let nonce = match cocoon_attestation::parse_nonce_query(req.uri().query()) {
        Ok(n) => n,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, ErrorCode::InvalidNonce, e, false),
    };
    let doc = match nonce {
        None => Ok(app.identity.cached_evidence.clone()),
        Some(n) => {
            let a = app.clone();
            tokio::task::spawn_blocking(move || a.identity.evidence(Some(&n))).await.unwrap_or_else(|e| {
                Err(cocoon_attestation::AttestationError::Producer(format!("evidence task failed: {e}")))
            })
        }
    };
    match doc {
        Ok(d) => ([(header::CONTENT_TYPE, media::EVIDENCE)], d).into_response(),
        Err(e) => {
            warn!("proxy evidence: {e}");
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::EvidenceUnavailable,
                "evidence could not be produced".into(),
                false,
            )
        }
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let ledger_ok = app.ledger.totals().is_ok();
    let workers = app.registry.all().len();
    let status = if ledger_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        axum::Json(json!({"proxy": "ok", "ledger": if ledger_ok { "ok" } else { "unavailable" }, "workers": workers})),
    )
        .into_response()
}

async fn market(State(app): State<Arc<App>>) -> Response {
    let market = app.registry.market();
    app.metrics.set_market(&market);
    let r = axum::Json(market).into_response();
    app.count("market", &r);
    r
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.set_market(&app.registry.market());
    let now = now_ms();
    let workers = app.registry.all();
    app.metrics.workers_admitted.set(workers.len() as i64);
    for w in &workers {
        let a = w.attested();
        let labels = WorkerLabels { worker: w.id.clone(), model: a.model_id().to_string() };
        app.metrics
            .worker_in_flight
            .get_or_create(&labels)
            .set(w.in_flight.load(std::sync::atomic::Ordering::Relaxed) as i64);
        let score = w.reputation(now, app.registry.reputation_config()).score;
        app.metrics.worker_score_milli.get_or_create(&labels).set((score * 1000.0) as i64);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.render())
        .into_response()
}

/// Serves until `shutdown` resolves, then lets streams in flight finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let router = router(app.clone());
    let options = HttpOptions {
        max_connections: Some(app.limits.max_connections),
        header_read_timeout: secs(app.limits.client_timeout_s),
        max_buf_size: Some(app.limits.max_header_bytes),
    };
    let listener = Arc::new(listener);
    let accept = move || {
        let listener = listener.clone();
        async move { listener.accept().await }
    };
    let connection = |stream: &tokio::net::TcpStream, _| {
        let _ = stream.set_nodelay(true);
        Some(Accepted::service(hyper_util::service::TowerToHyperService::new(router.clone())))
    };
    serve_http(accept, shutdown, options, grace, connection, || {}).await?;
    app.registry.persist();
    app.ledger.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::identity::Identity;
    use crate::ledger::Ledger;
    use crate::registry::Registry;
    use cocoon_protocol::{Commission, NanoTon};

    fn test_app(dir: &std::path::Path) -> Arc<App> {
        let ledger = Arc::new(Ledger::open(&dir.join("ledger.sqlite")).unwrap());
        let config = crate::config::ProxyConfig::default();
        let registry = Registry::new(
            config.clone(),
            cocoon_attestation::Policy::insecure_simulated(),
            Default::default(),
            ledger.clone(),
            None,
        );
        let producer = Arc::new(cocoon_attestation::simulated::SimulatedProducer::new());
        let commission = Commission::from_ppm(100_000).unwrap();
        let identity =
            Identity::new(ed25519_dalek::SigningKey::from_bytes(&[3; 32]), commission, NanoTon(0), producer).unwrap();
        App::new(registry, ledger, identity, commission, NanoTon(0), Limits::default(), None)
    }

    /// Hole 8: a panic inside a handler poisoned the reservations and replay
    /// locks, and every later request then panicked on `lock().expect(..)`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_panic_fails_that_request_alone() {
        use tower::ServiceExt as _;
        let dir = std::env::temp_dir().join(format!("cocoon-proxy-panic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let app = test_app(&dir);
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        app.ledger.deposit(&key.verifying_key().to_bytes(), NanoTon(1_000_000), None).unwrap();
        // A handler that panics while it holds both locks (what any bug on that path would do).
        let poisoner = {
            let app = app.clone();
            move || async move {
                let held = (app.reservations.pending.lock(), app.replays.lock());
                if held.0.is_ok() {
                    panic!("a bug while holding the locks");
                }
                StatusCode::OK
            }
        };
        let routes = with_safety(Router::new().route("/panic", get(poisoner)));
        let resp = routes.oneshot(http::Request::get("/panic").body(axum::body::Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "the panic is that request's 500");
        assert!(app.reservations.pending.is_poisoned() && app.replays.is_poisoned());
        // A hundred normal requests after it: each reserves, remembers its hash, and is answered.
        let r = router(app.clone());
        for i in 0..100u32 {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            let auth = cocoon_protocol::authorization::ClientAuthorization::sign(&key, &hash, NanoTon(1_000));
            let reservation = app.reserve(&auth.verify(&hash).unwrap()).unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert!(app.replays.locked().insert(hash, now_ms()));
            drop(reservation);
            let resp = r.clone().oneshot(http::Request::get("/healthz").body(axum::body::Body::empty()).unwrap());
            assert_eq!(resp.await.unwrap().status(), StatusCode::OK, "request {i}");
        }
        assert_eq!(app.reservations.accounts(), 0, "every reservation was released");
        app.ledger.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
