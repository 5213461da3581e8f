//! The proxy's error answers: OpenAI-shaped [`ApiError`] bodies with a code,
//! and the retryable ones that name the next worker to try.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use cocoon_protocol::media;
use cocoon_protocol::proxy_api::{ApiError, ErrorCode};

use crate::app::App;
use crate::registry::WorkerEntry;
use crate::reservation::ReserveError;

/// An OpenAI-style error body ([`ApiError`]); `retryable` tells the client runner to route again.
pub fn api_error(status: StatusCode, code: ErrorCode, message: String, retryable: bool) -> Response {
    let mut e = ApiError::new("proxy_error", code, message);
    e.error.retryable = retryable;
    error_response(status, &e)
}

fn error_response(status: StatusCode, e: &ApiError) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], e.to_bytes()).into_response();
    if let Some(n) = e.error.next_worker.as_deref().and_then(|n| http::HeaderValue::from_str(n).ok()) {
        r.headers_mut().insert(media::RETRY_WORKER_HEADER, n);
    }
    r
}

/// The worker failed before its first byte: a retryable error naming the next candidate.
pub fn failover(app: &App, worker: &WorkerEntry, model: &str, why: &str) -> Response {
    app.metrics.failovers.inc();
    let typical = app.registry.typical_request();
    let want = crate::registry::Want {
        exclude: std::slice::from_ref(&worker.id),
        gpus: &[],
        prompt_tokens: typical.prompt_tokens,
        completion_tokens: typical.completion_tokens,
        max_price: None,
    };
    let next = app.registry.pick(model, &want).map(|p| p.worker.id.clone());
    let message = format!("worker {} failed before answering: {why}", worker.id);
    let e = ApiError::new("proxy_error", ErrorCode::WorkerUnavailable, message).retryable(next);
    error_response(StatusCode::SERVICE_UNAVAILABLE, &e)
}

/// The worker is fine but was re-attested with new keys: retry it, re-sealed.
pub fn retry_same(app: &App, worker: &WorkerEntry, why: &str) -> Response {
    app.metrics.failovers.inc();
    let message = format!("worker {}: {why}", worker.id);
    let e = ApiError::new("proxy_error", ErrorCode::WorkerKeysChanged, message).retryable(Some(worker.id.clone()));
    error_response(StatusCode::SERVICE_UNAVAILABLE, &e)
}

impl ReserveError {
    pub fn into_response(self) -> Response {
        match self {
            ReserveError::LedgerUnavailable => {
                api_error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::LedgerUnavailable, self.to_string(), false)
            }
            ReserveError::InsufficientFunds { .. } => {
                api_error(StatusCode::PAYMENT_REQUIRED, ErrorCode::InsufficientFunds, self.to_string(), false)
            }
        }
    }
}
