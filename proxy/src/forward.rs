//! `POST /v1/ohttp`: check the client's authorisation, reserve its maximum
//! cost, forward the sealed bytes to the chosen worker, stream the answer
//! back frame by frame, and charge only a receipt that verifies.
//!
//! The proxy sees sealed bytes, their hash and sizes, the worker the client
//! chose, and the client's key and maximum cost; never content.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use cocoon_runtime::pump::{self, next_frame, pumped_body};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use cocoon_protocol::authorization::{ClientAuthorization, VerifiedAuthorization};
use cocoon_protocol::media::media_is;
use cocoon_protocol::proxy_api::{ApiError, ErrorCode};
use cocoon_protocol::{NanoTon, Receipt, media};

use crate::app::App;
use crate::config::secs;
use crate::ledger::{ChargeRecord, LedgerError};
use crate::registry::{Attested, WorkerEntry, now_ms};
use crate::reputation::Outcome;
use crate::reservation::Reservation;
use crate::response::{api_error, failover, retry_same};
use cocoon_runtime::LockExt;

/// Why a receipt was not charged.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("receipt is not base64")]
    Encoding,
    #[error(transparent)]
    Receipt(#[from] cocoon_protocol::receipt::ReceiptError),
    #[error("receipt names model digest {found}, the worker attested {expected}")]
    ModelDigest { expected: String, found: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl MeterError {
    /// The worker's fault (its receipt), as opposed to the proxy's own ledger.
    fn blames_worker(&self) -> bool {
        !matches!(self, MeterError::Ledger(_))
    }
}

/// The worker's answer cost more than the cap it was given: proof of its own
/// fault (the receipt is signed by its attested key and states the cap it applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrun {
    pub cost: NanoTon,
    /// The proxy's cap (the worker's share of the client's signed maximum).
    pub given: NanoTon,
    /// The cap the enclave says it applied (`None`: none reached it).
    pub applied: Option<NanoTon>,
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.applied {
            Some(a) if a <= self.given => {
                write!(
                    f,
                    "the answer cost {} at the worker's prices, above the cap of {a} its enclave applied",
                    self.cost
                )
            }
            Some(a) => write!(
                f,
                "the answer cost {}, above the proxy's cap of {}; the enclave applied {a}, so the worker's host raised it",
                self.cost, self.given
            ),
            None => write!(
                f,
                "the answer cost {}, above the proxy's cap of {}; no cap reached the enclave, so the worker's host removed it",
                self.cost, self.given
            ),
        }
    }
}

/// Who overran what, from a verified receipt: `None` when the answer's cost is
/// within both the cap the proxy gave and the cap the enclave applied. A
/// client that left out or raised its sealed cap cannot cause an overrun: the
/// enclave applies the smaller of the two caps.
pub fn overrun(cost: NanoTon, given: NanoTon, applied: Option<NanoTon>) -> Option<Overrun> {
    let limit = applied.map_or(given, |a| a.min(given));
    (cost > limit).then_some(Overrun { cost, given, applied })
}

/// One request in flight at a worker; the count drops with it.
struct InFlight(Arc<WorkerEntry>, Arc<App>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.metrics.in_flight.dec();
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub async fn ohttp(State(app): State<Arc<App>>, req: Request) -> Response {
    let r = handle(app.clone(), req).await;
    app.count("ohttp", &r);
    r
}

async fn handle(app: Arc<App>, req: Request) -> Response {
    let request = match read_request(&app, req).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let SealedRequest { worker_id, auth, sealed, request_hash, chunked } = request;
    // A request hash is forwarded once: a relay replaying captured bytes gets
    // no generation and no charge.
    if !app.replays.locked().insert(request_hash, now_ms()) || app.ledger.is_charged(&request_hash).unwrap_or(true) {
        return refuse(
            &app,
            ErrorCode::ReplayedRequest,
            StatusCode::CONFLICT,
            format!("request {} was already forwarded; seal a new request", hex::encode(request_hash)),
        );
    }
    let Some(worker) = app.registry.get(&worker_id) else {
        app.metrics.refuse(ErrorCode::UnknownWorker.as_str());
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownWorker,
            format!("worker {worker_id:?} is not admitted here; ask POST /v1/route again"),
            true,
        );
    };
    let reservation = match app.reserve(&auth) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = app.in_flight.clone().try_acquire_owned() else {
        return refuse(
            &app,
            ErrorCode::Busy,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; retry later".into(),
        );
    };
    let attested = worker.attested();
    worker.arrived();
    worker.in_flight.fetch_add(1, Ordering::Relaxed);
    app.metrics.in_flight.inc();
    let in_flight = InFlight(worker.clone(), app.clone());

    let started = Instant::now();
    // The worker's share of what the client signed: the enclave stops there,
    // whatever the sealed request says, so every answer is paid for.
    let cap = app.commission.worker_budget(auth.max_cost());
    let resp = match send_to_worker(&app, &worker, &attested, sealed, chunked, cap).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let ttfb_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ctx = Metering {
        app: app.clone(),
        worker,
        attested,
        auth,
        request_hash,
        _reservation: reservation,
        ttfb_ms,
        started,
    };
    if chunked {
        stream_back(ctx, resp, in_flight, permit).await
    } else {
        whole_back(ctx, resp, in_flight, permit).await
    }
}

/// A refusal of the client's request, counted by its code.
fn refuse(app: &App, code: ErrorCode, status: StatusCode, msg: String) -> Response {
    app.metrics.refuse(code.as_str());
    api_error(status, code, msg, false)
}

/// A sealed request whose headers, size and signature checked out.
struct SealedRequest {
    worker_id: String,
    auth: VerifiedAuthorization,
    sealed: Bytes,
    request_hash: [u8; 32],
    /// Sealed as chunks (streamed answer) rather than whole.
    chunked: bool,
}

/// Reads the request within the body limits and times, and verifies the
/// client's signature over the sealed bytes' hash.
async fn read_request(app: &App, req: Request) -> Result<SealedRequest, Response> {
    let headers = req.headers().clone();
    let content_type = header_str(&headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let chunked = media_is(content_type, media::OHTTP_CHUNKED_REQUEST);
    if !media_is(content_type, media::OHTTP_REQUEST) && !chunked {
        return Err(refuse(
            app,
            ErrorCode::UnsupportedMediaType,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected {} or {}", media::OHTTP_REQUEST, media::OHTTP_CHUNKED_REQUEST),
        ));
    }
    let Some(worker_id) = header_str(&headers, media::WORKER_HEADER).map(str::to_owned) else {
        return Err(refuse(
            app,
            ErrorCode::MissingWorker,
            StatusCode::BAD_REQUEST,
            format!("header {} is missing: name the worker from POST /v1/route", media::WORKER_HEADER),
        ));
    };
    let auth = ClientAuthorization::from_headers(|n| header_str(&headers, n))
        .map_err(|e| refuse(app, ErrorCode::Unauthorized, StatusCode::UNAUTHORIZED, e.to_string()))?;
    let max_body = app.limits.max_body;
    let declared = header_str(&headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(refuse(
            app,
            ErrorCode::BodyTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("sealed request of {} bytes exceeds the limit of {max_body}", declared.unwrap_or(0)),
        ));
    }
    let body = Limited::new(req.into_body(), max_body).collect();
    let sealed = match tokio::time::timeout(secs(app.limits.client_timeout_s), body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(refuse(
                app,
                ErrorCode::BodyTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("sealed request exceeds the limit of {max_body} bytes"),
            ));
        }
        Ok(Err(_)) => {
            return Err(refuse(
                app,
                ErrorCode::BodyError,
                StatusCode::BAD_REQUEST,
                "the request body broke off".into(),
            ));
        }
        Err(_) => {
            return Err(refuse(
                app,
                ErrorCode::BodyTimeout,
                StatusCode::REQUEST_TIMEOUT,
                "the request body arrived too slowly".into(),
            ));
        }
    };
    let request_hash: [u8; 32] = Sha256::digest(&sealed).into();
    let auth = auth
        .verify(&request_hash)
        .map_err(|e| refuse(app, ErrorCode::BadSignature, StatusCode::UNAUTHORIZED, e.to_string()))?;
    Ok(SealedRequest { worker_id, auth, sealed, request_hash, chunked })
}

/// Forwards the sealed bytes with the worker's cap; returns the worker's
/// successful answer, or what the client is told instead (another worker to
/// try, the same one after new keys, or the worker's refusal).
async fn send_to_worker(
    app: &Arc<App>,
    worker: &Arc<WorkerEntry>,
    attested: &Attested,
    sealed: Bytes,
    chunked: bool,
    cap: NanoTon,
) -> Result<http::Response<Incoming>, Response> {
    let uri = cocoon_client::http::join(&worker.url, "/v1/ohttp")
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::WorkerUrl, e.to_string(), false))?;
    let upstream = http::Request::post(uri)
        // The canonical spelling: the client's may differ in case or carry parameters.
        .header(header::CONTENT_TYPE, if chunked { media::OHTTP_CHUNKED_REQUEST } else { media::OHTTP_REQUEST })
        .header(header::TE, "trailers")
        .header(media::WORKER_CAP_HEADER, cap.0)
        .body(Full::new(sealed))
        .expect("valid request parts");
    let sent = tokio::time::timeout(secs(app.limits.first_byte_timeout_s), app.http.send(upstream)).await;
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(worker = %worker.id, "worker unreachable: {e}");
            app.registry.record(worker, Outcome::Failed);
            app.registry.mark_down(worker);
            return Err(failover(app, worker, attested.model_id(), "the worker could not be reached"));
        }
        Err(_) => {
            app.registry.record(worker, Outcome::TimedOut);
            app.registry.mark_down(worker);
            return Err(failover(app, worker, attested.model_id(), "the worker did not answer in time"));
        }
    };
    let status = resp.status();
    if status.is_server_error() {
        app.registry.record(worker, Outcome::Failed);
        app.registry.mark_down(worker);
        return Err(failover(app, worker, attested.model_id(), &format!("the worker answered {status}")));
    }
    if status == StatusCode::BAD_REQUEST {
        return Err(worker_refused(app, worker, attested, resp).await);
    }
    if !status.is_success() {
        let body = Limited::new(resp.into_body(), 4096).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(api_error(status, ErrorCode::WorkerRefused, format!("the worker answered {status}: {msg}"), false));
    }
    Ok(resp)
}

/// The worker's 400: passed on, unless it could not open the request, which
/// may mean it restarted with new keys (then the client re-seals to it).
async fn worker_refused(
    app: &Arc<App>,
    worker: &Arc<WorkerEntry>,
    attested: &Attested,
    resp: http::Response<Incoming>,
) -> Response {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 4096).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let refusal = ApiError::parse(&body);
    let msg = match &refusal {
        Some(e) => e.error.message.clone(),
        None => String::from_utf8_lossy(&body).trim().to_string(),
    };
    let refused =
        || api_error(status, ErrorCode::WorkerRefused, format!("the worker refused the sealed request: {msg}"), false);
    // A request dated outside the worker's replay window (the client's
    // clock) is the client's to fix; only an unopenable one suggests new keys.
    if refusal.map(|e| e.error.code) != Some(ErrorCode::CannotOpen) {
        return refused();
    }
    // Perhaps sealed to keys the worker no longer has (it restarted): re-attest
    // it now; if its keys changed, the client re-seals to the same worker.
    app.registry.mark_stale(worker);
    match app.registry.admit(&worker.url).await {
        Ok(w) if w.attested().claims_digest() != attested.claims_digest() => {
            retry_same(app, worker, "the worker restarted with new keys; seal the request again")
        }
        Ok(_) => refused(),
        Err(e) => {
            warn!(worker = %worker.id, "re-attestation after a refused request failed: {e}");
            app.registry.mark_down(worker);
            failover(app, worker, attested.model_id(), "the worker could not be re-attested")
        }
    }
}

/// What metering a response needs.
struct Metering {
    app: Arc<App>,
    worker: Arc<WorkerEntry>,
    attested: Arc<Attested>,
    auth: VerifiedAuthorization,
    request_hash: [u8; 32],
    /// Held until the answer is metered: its drop releases the reserved maximum.
    _reservation: Reservation,
    ttfb_ms: f64,
    started: Instant,
}

impl Metering {
    /// Verifies the receipt and commits its charge; returns the client's charge.
    ///
    /// The charge is the receipt's tokens at the worker's attested prices,
    /// capped at the worker's share of the client's signed maximum, plus the
    /// commission: never more than the client signed. An answer that ran past
    /// the cap the worker was given is still charged up to that cap (the
    /// client received it), and the worker is quarantined for the overrun.
    async fn charge(&self, receipt_b64: &[u8]) -> Result<NanoTon, MeterError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(receipt_b64).map_err(|_| MeterError::Encoding)?;
        let receipt = Receipt::verify(&bytes, self.attested.receipt_key())?;
        receipt.expect_request(&self.request_hash)?;
        let digest = receipt.model_digest.as_ref().map(|d| d.as_slice()).unwrap_or_default();
        if digest != self.attested.model_digest().as_slice() {
            return Err(MeterError::ModelDigest {
                expected: hex::encode(self.attested.model_digest()),
                found: hex::encode(digest),
            });
        }
        let cost = self.attested.prices().cost(receipt.prompt_tokens, receipt.completion_tokens);
        let given = self.app.commission.worker_budget(self.auth.max_cost());
        let bill = self.app.commission.bill(cost, self.auth.max_cost());
        self.app
            .ledger
            .charge(ChargeRecord {
                request_hash: self.request_hash,
                client_key: *self.auth.client_key(),
                worker_id: self.worker.id.clone(),
                worker_url: self.worker.url.clone(),
                payout_address: self.attested.payout_address().map(str::to_owned),
                model_id: self.attested.model_id().to_string(),
                prompt_tokens: receipt.prompt_tokens,
                completion_tokens: receipt.completion_tokens,
                worker_cost: bill.worker_cost,
                commission: bill.commission,
                charge: bill.charge,
                receipt: bytes,
                created_at: now_ms() / 1000,
            })
            .await?;
        self.app.metrics.charges.inc();
        self.app.metrics.charged_nanoton.inc_by(bill.charge.0);
        self.app.metrics.commission_nanoton.inc_by(bill.commission.0);
        match overrun(cost, given, receipt.cost_cap) {
            Some(o) => {
                warn!(worker = %self.worker.id, "worker quarantined: {o}");
                self.app.metrics.refuse("worker_overrun");
                self.app.registry.record(&self.worker, Outcome::BadReceipt);
            }
            None => self.app.registry.record(
                &self.worker,
                Outcome::Completed {
                    ttfb_ms: self.ttfb_ms,
                    tokens: receipt.completion_tokens,
                    seconds: self.started.elapsed().as_secs_f64(),
                },
            ),
        }
        Ok(bill.charge)
    }

    fn receipt_failed(&self, e: &MeterError) {
        if e.blames_worker() {
            warn!(worker = %self.worker.id, "invalid receipt, worker quarantined: {e}");
            self.app.registry.record(&self.worker, Outcome::BadReceipt);
        } else {
            warn!("charging a verified receipt failed: {e}");
        }
    }
}

/// The worker's status and media type; nothing else of its head is passed on.
fn response_head(parts: &http::response::Parts) -> http::response::Builder {
    let out = Response::builder().status(parts.status);
    match parts.headers.get(header::CONTENT_TYPE) {
        Some(ct) => out.header(header::CONTENT_TYPE, ct),
        None => out,
    }
}

/// A whole (non-chunked) answer: the receipt is a header, so it is checked
/// and charged before the body is passed on.
async fn whole_back(
    m: Metering,
    resp: http::Response<Incoming>,
    in_flight: InFlight,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = response_head(&parts);
    match parts.headers.get(media::RECEIPT_HEADER) {
        Some(receipt) => match m.charge(receipt.as_bytes()).await {
            Ok(charge) => {
                out = out.header(media::RECEIPT_HEADER, receipt).header(media::CHARGE_HEADER, charge.0.to_string());
            }
            Err(e) => {
                m.receipt_failed(&e);
                return api_error(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::InvalidReceipt,
                    format!("not charged: {e}"),
                    true,
                );
            }
        },
        None => {
            m.app.metrics.answers_without_receipt.inc();
        }
    }
    let body = pump(m, body, in_flight, permit, ReceiptIn::Head);
    out.body(body).expect("valid response parts")
}

/// A chunked answer: frames pass as they come; the receipt trailer is checked
/// and charged, and the charge added, before the trailers go on.
async fn stream_back(
    m: Metering,
    resp: http::Response<Incoming>,
    in_flight: InFlight,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let (parts, body) = resp.into_parts();
    let out = response_head(&parts)
        .header(header::TRAILER, HeaderValue::from_static("cocoon-receipt, cocoon-charge, cocoon-worker-failed"));
    out.body(pump(m, body, in_flight, permit, ReceiptIn::Trailer)).expect("valid response parts")
}

/// Where an answer's receipt travels: in its head (a whole answer, charged
/// before the body is passed on) or in its trailer (a stream, charged at the end).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReceiptIn {
    Head,
    Trailer,
}

fn pump(
    m: Metering,
    mut body: Incoming,
    in_flight: InFlight,
    permit: tokio::sync::OwnedSemaphorePermit,
    receipt_in: ReceiptIn,
) -> Body {
    let (tx, out) = pumped_body();
    let idle = secs(m.app.limits.idle_timeout_s);
    tokio::spawn(async move {
        let _hold = (in_flight, permit);
        let mut saw_trailers = false;
        let mut abandoned = false;
        loop {
            match next_frame(&mut body, idle).await {
                pump::Upstream::Frame(frame) => {
                    let frame = match frame.into_trailers() {
                        Ok(trailers) if receipt_in == ReceiptIn::Trailer => {
                            saw_trailers = true;
                            match metered_trailers(&m, trailers).await {
                                Some(t) => Frame::trailers(t),
                                None => {
                                    tx.fail("the worker's receipt did not verify: not charged").await;
                                    return;
                                }
                            }
                        }
                        Ok(trailers) => Frame::trailers(trailers),
                        Err(frame) => frame,
                    };
                    if !tx.send(frame).await {
                        abandoned = true;
                        break;
                    }
                }
                pump::Upstream::End => break,
                pump::Upstream::Broken(e) => {
                    m.app.registry.record(&m.worker, Outcome::Failed);
                    worker_failed(&tx, receipt_in, &format!("the worker's answer broke off: {e}")).await;
                    return;
                }
                pump::Upstream::Silent => {
                    m.app.registry.record(&m.worker, Outcome::TimedOut);
                    worker_failed(&tx, receipt_in, "the worker's answer went silent").await;
                    return;
                }
            }
        }
        let metered_at_end = receipt_in == ReceiptIn::Trailer && !saw_trailers;
        if abandoned && metered_at_end {
            // The client went away mid-stream: closing the worker's stream stops its
            // generation, and the enclave keeps a receipt for what it generated.
            drop(body);
            charge_abandoned(&m).await;
        } else if metered_at_end {
            m.app.metrics.answers_without_receipt.inc();
        }
    });
    Body::new(out)
}

/// Ends a stream whose worker failed. A streamed answer (charged at its end,
/// so not charged now) ends with a trailer that says so, which lets the
/// client send the request to another worker if it received no content; a
/// whole answer was charged before its body, so its body only breaks.
async fn worker_failed(tx: &cocoon_runtime::pump::FrameSender, receipt_in: ReceiptIn, why: &str) {
    if receipt_in == ReceiptIn::Head {
        return tx.fail(why.to_string()).await;
    }
    let mut trailers = HeaderMap::new();
    let value = HeaderValue::from_str(why).unwrap_or_else(|_| HeaderValue::from_static("the worker failed"));
    trailers.insert(media::WORKER_FAILED_TRAILER, value);
    tx.send(Frame::trailers(trailers)).await;
}

/// How long the proxy asks a worker for the receipt of a stream its client
/// abandoned: the enclave stops within a token and then signs it.
const ABANDONED_RECEIPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fetches the receipt of a stream the client abandoned and charges it (the
/// same checks as a trailer's, within what the client signed).
async fn charge_abandoned(m: &Metering) {
    let Ok(uri) = cocoon_client::http::join(&m.worker.url, &format!("/v1/receipts/{}", hex::encode(m.request_hash)))
    else {
        return;
    };
    let deadline = tokio::time::Instant::now() + ABANDONED_RECEIPT_WAIT;
    let mut pause = std::time::Duration::from_millis(50);
    while tokio::time::Instant::now() < deadline {
        let req = http::Request::get(uri.clone()).body(Full::new(Bytes::new())).expect("valid request parts");
        if let Ok(Ok(resp)) = tokio::time::timeout(pause * 4, m.app.http.send(req)).await
            && resp.status().is_success()
            && let Some(receipt) = resp.headers().get(media::RECEIPT_HEADER)
        {
            match m.charge(receipt.as_bytes()).await {
                Ok(charge) => {
                    m.app.metrics.abandoned_charged.inc();
                    debug!(worker = %m.worker.id, charge = charge.0, "charged a stream its client abandoned");
                }
                Err(e) => m.receipt_failed(&e),
            }
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
    m.app.metrics.answers_without_receipt.inc();
    debug!(worker = %m.worker.id, "no receipt for a stream its client abandoned");
}

/// The trailers to pass on: the receipt and the charge, or `None` (the stream
/// is cut, so the client sees an error) when the receipt fails.
async fn metered_trailers(m: &Metering, trailers: HeaderMap) -> Option<HeaderMap> {
    let Some(receipt) = trailers.get(media::RECEIPT_HEADER).cloned() else {
        m.app.metrics.answers_without_receipt.inc();
        return Some(HeaderMap::new());
    };
    match m.charge(receipt.as_bytes()).await {
        Ok(charge) => {
            let mut out = HeaderMap::new();
            out.insert(media::RECEIPT_HEADER, receipt);
            out.insert(media::CHARGE_HEADER, HeaderValue::from(charge.0));
            Some(out)
        }
        Err(e) => {
            m.receipt_failed(&e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_past_the_cap_its_worker_was_given_is_an_overrun() {
        let n = NanoTon;
        // Within both caps, or a client's sealed cap below the proxy's: nobody's fault.
        assert_eq!(overrun(n(90), n(100), Some(n(100))), None);
        assert_eq!(overrun(n(50), n(100), Some(n(50))), None);
        assert_eq!(overrun(n(100), n(100), None), None, "no cap arrived, but nothing ran past the proxy's");
        // Past the cap the enclave applied: its own fault.
        let o = overrun(n(60), n(100), Some(n(50))).unwrap();
        assert!(o.to_string().contains("its enclave applied"), "{o}");
        // Past the proxy's cap because the host raised or removed it on the way.
        assert!(overrun(n(150), n(100), Some(n(200))).unwrap().to_string().contains("raised it"));
        assert!(overrun(n(101), n(100), None).unwrap().to_string().contains("removed it"));
    }
}
