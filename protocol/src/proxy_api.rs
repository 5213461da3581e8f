//! The proxy's HTTP API on the wire: the JSON bodies of its endpoints and
//! the error body every party answers with (proxy, host shim, enclave outside
//! the seal), as serde types the proxy writes and the client runner, workers'
//! tools and tests read. A decision is taken on an [`ErrorCode`], never on
//! another component's English text.
//!
//! Money is integer nanoTON ([`NanoTon`]); evidence travels base64.

use serde::{Deserialize, Serialize};

use crate::price::{NanoTon, Prices};

/// What an error is about, as a client (or a proxy, or a test) may act on it.
/// Serialised in `snake_case`; a code this build does not know reads as
/// [`ErrorCode::Unknown`] rather than failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // The request itself.
    InvalidJson,
    InvalidRequest,
    BodyTooLarge,
    BodyError,
    BodyTimeout,
    UnsupportedMediaType,
    MissingWorker,
    RateLimited,
    // The client's authorisation and money.
    Unauthorized,
    BadSignature,
    ReplayedRequest,
    InsufficientFunds,
    // Routing and workers.
    ModelNotFound,
    NoWorkerAvailable,
    UnknownWorker,
    WorkerUnavailable,
    WorkerKeysChanged,
    WorkerRefused,
    WorkerUrl,
    InvalidReceipt,
    NotAdmitted,
    ProxyNotListed,
    // The enclave, outside the seal.
    /// The sealed request could not be opened (perhaps sealed to keys the worker no longer has).
    CannotOpen,
    /// The sealed request was seen before.
    Replayed,
    /// The sealed request is dated outside the enclave's window, or undated.
    Stale,
    // The enclave's API, inside the seal.
    /// The opened request is not a Binary HTTP request.
    BadMessage,
    /// No such endpoint.
    NotFound,
    MethodNotAllowed,
    /// The enclave has no model loaded.
    ModelNotLoaded,
    /// The answer would cost more than the smaller of the client's and the proxy's caps.
    MaxCostExceeded,
    /// The engine failed.
    #[serde(rename = "engine")]
    EngineFailed,
    // The client runner.
    /// A stream broke off after it began.
    StreamFailed,
    /// Every worker of the model charges more than the client's ceiling.
    PriceAboveCeiling,
    /// The proxy or the worker answered what the runner cannot pass on as it is.
    UpstreamError,
    /// The proxy's charge differs from what the verified receipt costs.
    ChargeMismatch,
    // Payments on TON.
    NoPayments,
    InvalidVoucher,
    VoucherNotCovered,
    ChannelClosing,
    ChainUnavailable,
    InvalidPayee,
    NothingEarned,
    // An app's sponsor (`cocoon sponsor`).
    /// The Telegram init data is missing, malformed or not signed with the bot's token.
    InitDataInvalid,
    /// The Telegram init data is older than the sponsor accepts.
    InitDataExpired,
    /// The user's quota for this period is spent.
    QuotaExhausted,
    /// This request hash was authorised before.
    AlreadySigned,
    // The server.
    Busy,
    LedgerUnavailable,
    EvidenceUnavailable,
    InvalidNonce,
    InternalError,
    /// A code this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it is written on the wire (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::BodyError => "body_error",
            ErrorCode::BodyTimeout => "body_timeout",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MissingWorker => "missing_worker",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::ReplayedRequest => "replayed_request",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::NoWorkerAvailable => "no_worker_available",
            ErrorCode::UnknownWorker => "unknown_worker",
            ErrorCode::WorkerUnavailable => "worker_unavailable",
            ErrorCode::WorkerKeysChanged => "worker_keys_changed",
            ErrorCode::WorkerRefused => "worker_refused",
            ErrorCode::WorkerUrl => "worker_url",
            ErrorCode::InvalidReceipt => "invalid_receipt",
            ErrorCode::NotAdmitted => "not_admitted",
            ErrorCode::ProxyNotListed => "proxy_not_listed",
            ErrorCode::CannotOpen => "cannot_open",
            ErrorCode::Replayed => "replayed",
            ErrorCode::Stale => "stale",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ModelNotLoaded => "model_not_loaded",
            ErrorCode::MaxCostExceeded => "max_cost_exceeded",
            ErrorCode::EngineFailed => "engine",
            ErrorCode::StreamFailed => "stream_failed",
            ErrorCode::PriceAboveCeiling => "price_above_ceiling",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::ChargeMismatch => "charge_mismatch",
            ErrorCode::NoPayments => "no_payments",
            ErrorCode::InvalidVoucher => "invalid_voucher",
            ErrorCode::VoucherNotCovered => "voucher_not_covered",
            ErrorCode::ChannelClosing => "channel_closing",
            ErrorCode::ChainUnavailable => "chain_unavailable",
            ErrorCode::InvalidPayee => "invalid_payee",
            ErrorCode::NothingEarned => "nothing_earned",
            ErrorCode::InitDataInvalid => "init_data_invalid",
            ErrorCode::InitDataExpired => "init_data_expired",
            ErrorCode::QuotaExhausted => "quota_exhausted",
            ErrorCode::AlreadySigned => "already_signed",
            ErrorCode::Busy => "busy",
            ErrorCode::LedgerUnavailable => "ledger_unavailable",
            ErrorCode::EvidenceUnavailable => "evidence_unavailable",
            ErrorCode::InvalidNonce => "invalid_nonce",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OpenAI-style error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub message: String,
    /// OpenAI's error type (`proxy_error`, `enclave_error`, `invalid_request_error`...).
    #[serde(rename = "type")]
    pub kind: String,
    pub code: ErrorCode,
    /// OpenAI's `param` (always null here), for SDKs that read it.
    #[serde(default)]
    pub param: Option<String>,
    /// Routing again (and sealing again) may succeed: nothing was generated.
    #[serde(default)]
    pub retryable: bool,
    /// The worker to try next, when the proxy knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_worker: Option<String>,
}

impl ApiError {
    pub fn new(kind: &str, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            error: ApiErrorBody {
                message: message.into(),
                kind: kind.into(),
                code,
                param: None,
                retryable: false,
                next_worker: None,
            },
        }
    }

    pub fn retryable(mut self, next_worker: Option<String>) -> ApiError {
        self.error.retryable = true;
        self.error.next_worker = next_worker;
        self
    }

    /// The body as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an error body serialises")
    }

    /// Parses an error body; `None` when `body` is not one.
    pub fn parse(body: &[u8]) -> Option<ApiError> {
        serde_json::from_slice(body).ok()
    }
}

/// `POST /v1/route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    pub model: String,
    /// Workers not to pick (they failed this request).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// GPU chips the client's policy accepts (`GH100`...): only workers whose
    /// verified GPUs are all of these (empty: any worker).
    #[serde(default)]
    pub gpu: Vec<String>,
    /// The request's prompt tokens, at most (the proxy ranks workers by what
    /// the request would cost at each one's prices; without it, by a typical request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// The completion tokens the request may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The client's price ceiling: only workers whose both prices are at or
    /// below it (the client checks the pick's attested prices too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<Prices>,
}

/// The worker a route answer picked, as the proxy verified it (a client
/// verifies the evidence again under its own policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedWorker {
    pub id: String,
    pub model: String,
    pub prices: Prices,
    pub payout_address: Option<String>,
    pub capacity: u32,
}

/// The answer to `POST /v1/route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAnswer {
    pub worker: RoutedWorker,
    /// The worker's evidence document, base64 (standard alphabet).
    pub evidence: String,
    pub commission_ppm: u64,
    /// Other eligible workers, best first.
    pub alternatives: Vec<String>,
}

/// `POST /v1/workers`: a worker asks to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub url: String,
}

/// One admitted worker in `GET /v1/workers` (and the answer to a join).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: String,
    pub url: String,
    pub model: String,
    /// Hex SHA-256.
    pub model_digest: String,
    pub platform: String,
    pub prices: Prices,
    pub payout_address: Option<String>,
    pub capacity: u32,
    pub gpus: Vec<String>,
    pub in_flight: u32,
    /// `up`, `quarantined`, `down` or `re-attesting`.
    pub state: String,
    /// The proxy's reputation record of the worker (score, latency, outcomes).
    pub reputation: serde_json::Value,
    pub evidence_age_s: u64,
    /// Hex SHA-256 of the evidence document.
    pub evidence_sha256: String,
}

/// `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<WorkerView>,
    /// The models the admitted workers serve.
    pub models: Vec<String>,
}

/// `GET /v1/market`: what the admitted workers charge, per model, from their
/// verified claims. Prices are ordered by what a typical request costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Market {
    /// The request the `typical_cost` of each price is for.
    pub typical_request: TypicalRequest,
    pub models: Vec<ModelMarket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypicalRequest {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One model's market: its workers that are up, and the lowest, median and
/// highest of their prices with the capacity and load at each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMarket {
    pub model: String,
    pub workers: u32,
    /// Requests the workers serve at once, in all.
    pub capacity: u32,
    pub in_flight: u32,
    pub lowest: PricePoint,
    pub median: PricePoint,
    pub highest: PricePoint,
}

/// The workers of a model at one price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePoint {
    pub prices: Prices,
    /// A typical request at these prices, commission excluded.
    pub typical_cost: NanoTon,
    pub workers: u32,
    pub capacity: u32,
    pub in_flight: u32,
}

/// What a voucher did to the account (`POST /v1/vouchers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherAccepted {
    /// nanoTON this voucher added to the account.
    pub credited: NanoTon,
    /// The newest voucher's total on this channel.
    pub voucher_total: NanoTon,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_and_writes_as_its_name() {
        let all = [
            ErrorCode::InvalidJson,
            ErrorCode::InvalidRequest,
            ErrorCode::BodyTooLarge,
            ErrorCode::BodyError,
            ErrorCode::BodyTimeout,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::MissingWorker,
            ErrorCode::RateLimited,
            ErrorCode::Unauthorized,
            ErrorCode::BadSignature,
            ErrorCode::ReplayedRequest,
            ErrorCode::InsufficientFunds,
            ErrorCode::ModelNotFound,
            ErrorCode::NoWorkerAvailable,
            ErrorCode::UnknownWorker,
            ErrorCode::WorkerUnavailable,
            ErrorCode::WorkerKeysChanged,
            ErrorCode::WorkerRefused,
            ErrorCode::WorkerUrl,
            ErrorCode::InvalidReceipt,
            ErrorCode::NotAdmitted,
            ErrorCode::ProxyNotListed,
            ErrorCode::CannotOpen,
            ErrorCode::Replayed,
            ErrorCode::Stale,
            ErrorCode::BadMessage,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::ModelNotLoaded,
            ErrorCode::MaxCostExceeded,
            ErrorCode::EngineFailed,
            ErrorCode::StreamFailed,
            ErrorCode::PriceAboveCeiling,
            ErrorCode::UpstreamError,
            ErrorCode::ChargeMismatch,
            ErrorCode::NoPayments,
            ErrorCode::InvalidVoucher,
            ErrorCode::VoucherNotCovered,
            ErrorCode::ChannelClosing,
            ErrorCode::ChainUnavailable,
            ErrorCode::InvalidPayee,
            ErrorCode::NothingEarned,
            ErrorCode::InitDataInvalid,
            ErrorCode::InitDataExpired,
            ErrorCode::QuotaExhausted,
            ErrorCode::AlreadySigned,
            ErrorCode::Busy,
            ErrorCode::LedgerUnavailable,
            ErrorCode::EvidenceUnavailable,
            ErrorCode::InvalidNonce,
            ErrorCode::InternalError,
            ErrorCode::Unknown,
        ];
        for code in &all {
            let name = code.as_str();
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(name));
            assert_eq!(serde_json::from_value::<ErrorCode>(serde_json::json!(name)).unwrap(), *code);
        }
        assert_eq!(
            serde_json::from_value::<ErrorCode>(serde_json::json!("from_a_newer_proxy")).unwrap(),
            ErrorCode::Unknown
        );
    }

    #[test]
    fn error_bodies_round_trip_and_stay_openai_shaped() {
        let e = ApiError::new("proxy_error", ErrorCode::WorkerUnavailable, "worker w-1 failed")
            .retryable(Some("w-2".into()));
        let v: serde_json::Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(v["error"]["type"], "proxy_error");
        assert_eq!(v["error"]["code"], "worker_unavailable");
        assert_eq!(v["error"]["next_worker"], "w-2");
        assert_eq!(ApiError::parse(&e.to_bytes()), Some(e));
        assert_eq!(ApiError::parse(b"not json"), None);
        // An older body without retryable reads as not retryable.
        let old = br#"{"error":{"message":"m","type":"t","code":"busy"}}"#;
        assert!(!ApiError::parse(old).unwrap().error.retryable);
    }
}
