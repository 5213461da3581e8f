//! `cocoon sponsor`: an app pays for its users' requests without seeing them.
//!
//! A Mini App's page seals a request in the user's browser; the app's server
//! (this service, holding the app's account key) is sent only the sealed
//! request's hash, the model and the most it may cost, with the user's
//! Telegram init data. It checks the init data against the bot's token
//! ([`crate::telegram`]), charges the maximum cost against the user's quota
//! for the current period, refuses a hash it signed before, and returns the
//! charge authorisation the proxy accepts (`cocoon-client-key`,
//! `cocoon-max-cost`, `cocoon-signature`). The browser sends the sealed
//! request through the proxy with it; the proxy charges the app's account
//! what the answer costs, at most that maximum. The app never sees a prompt
//! or an answer, and the proxy sees neither either.
//!
//! The quota book is SQLite (WAL, synchronous = FULL): a signature is
//! recorded, with what it spends of the quota, before it is returned, so a
//! restart neither forgets a quota nor lets a hash be signed twice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::SigningKey;
use http::StatusCode;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use cocoon_protocol::NanoTon;
use cocoon_protocol::authorization::ClientAuthorization;
use cocoon_protocol::proxy_api::{ApiError, ErrorCode};
use cocoon_runtime::LockExt;

use crate::telegram::{InitDataError, MAX_INIT_DATA};

/// Largest request body the sponsor reads.
const MAX_BODY: usize = MAX_INIT_DATA + 1024;
/// Longest model name accepted.
const MAX_MODEL: usize = 128;

/// What the sponsor allows.
#[derive(Debug, Clone)]
pub struct SponsorPolicy {
    /// The bot's token, which signs its users' init data.
    pub bot_token: String,
    /// Init data older than this (seconds) is refused.
    pub max_age_s: u64,
    /// What one user may be authorised for per period, in all (nanoTON).
    pub quota: NanoTon,
    /// The quota's period (seconds); quotas renew at multiples of it.
    pub period_s: u64,
    /// The most one request may be authorised for.
    pub max_cost: NanoTon,
    /// The models users may ask for; empty allows any.
    pub models: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SponsorError {
    #[error(transparent)]
    InitData(#[from] InitDataError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "user {user} has {left} nanoTON of its quota of {quota} left in this period (until unix time {renews}); \
         the request asks for up to {asked}"
    )]
    QuotaExhausted { user: i64, quota: u64, left: u64, asked: u64, renews: u64 },
    #[error("request {0} was authorised before; seal a new request")]
    AlreadySigned(String),
    #[error("the quota book {path}: {source}")]
    Book { path: String, source: rusqlite::Error },
}

impl SponsorError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            SponsorError::InitData(InitDataError::Expired { .. } | InitDataError::FromTheFuture { .. }) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::InitDataExpired)
            }
            SponsorError::InitData(_) => (StatusCode::UNAUTHORIZED, ErrorCode::InitDataInvalid),
            SponsorError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
            SponsorError::QuotaExhausted { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::QuotaExhausted),
            SponsorError::AlreadySigned(_) => (StatusCode::CONFLICT, ErrorCode::AlreadySigned),
            SponsorError::Book { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::LedgerUnavailable),
        }
    }
}

impl IntoResponse for SponsorError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let kind = if status.is_client_error() { "invalid_request_error" } else { "server_error" };
        let body = ApiError::new(kind, code, self.to_string()).to_bytes();
        (status, [(http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// What the browser asks the sponsor to sign.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SponsorRequest {
    /// The Mini App's `Telegram.WebApp.initData`.
    pub init_data: String,
    /// Hex SHA-256 of the sealed request (what the proxy hashes).
    pub request_hash: String,
    pub model: String,
    /// The most the request may cost, commission included (nanoTON).
    pub max_cost: NanoTon,
}

/// The authorisation, as the headers to send the proxy with the sealed request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sponsored {
    pub headers: std::collections::BTreeMap<String, String>,
    pub user_id: i64,
    /// What the user may still be authorised for in this period (nanoTON).
    pub quota_left: NanoTon,
}

/// The quota book: signatures given and what each user spent per period.
pub struct QuotaBook {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS signed (
    request_hash BLOB PRIMARY KEY CHECK (length(request_hash) = 32),
    user_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    max_cost INTEGER NOT NULL CHECK (max_cost >= 0),
    signed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    user_id INTEGER NOT NULL,
    period INTEGER NOT NULL,
    spent INTEGER NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (user_id, period)
);
";

impl QuotaBook {
    pub fn open(path: &Path) -> Result<QuotaBook, SponsorError> {
        let book = |source| SponsorError::Book { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(book)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(book)?;
        // A signature is on disk before it is returned.
        conn.pragma_update(None, "synchronous", "FULL").map_err(book)?;
        conn.execute_batch(SCHEMA).map_err(book)?;
        Ok(QuotaBook { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    /// Records `signature`, spending its cost of the user's `quota` for
    /// `period`; what is left, or why not.
    fn spend(&self, signature: &Signature, quota: u64, period: u64) -> Result<u64, Spend> {
        let Signature { user, hash, model, cost, at } = *signature;
        let book = |source| Spend::Book(SponsorError::Book { path: self.path.display().to_string(), source });
        let mut conn = self.conn.locked();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(book)?;
        let seen = tx
            .query_row("SELECT 1 FROM signed WHERE request_hash = ?1", [hash.as_slice()], |_| Ok(()))
            .optional()
            .map_err(book)?;
        if seen.is_some() {
            return Err(Spend::AlreadySigned);
        }
        let spent = self.spent_in(&tx, user, period).map_err(book)?;
        let left = quota.saturating_sub(spent);
        if cost > left {
            return Err(Spend::Exhausted { left });
        }
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO signed (request_hash, user_id, model, max_cost, signed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash.as_slice(), user, model, as_i64(cost), as_i64(at)],
        )
        .map_err(book)?;
        tx.execute(
            "INSERT INTO usage (user_id, period, spent) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, period) DO UPDATE SET spent = spent + excluded.spent",
            params![user, as_i64(period), as_i64(cost)],
        )
        .map_err(book)?;
        tx.commit().map_err(book)?;
        Ok(left - cost)
    }

    fn spent_in(&self, conn: &Connection, user: i64, period: u64) -> rusqlite::Result<u64> {
        let spent: Option<i64> = conn
            .query_row(
                "SELECT spent FROM usage WHERE user_id = ?1 AND period = ?2",
                params![user, i64::try_from(period).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(spent.unwrap_or(0).max(0) as u64)
    }

    /// What `user` spent in `period`.
    pub fn spent(&self, user: i64, period: u64) -> Result<u64, SponsorError> {
        let conn = self.conn.locked();
        self.spent_in(&conn, user, period)
            .map_err(|source| SponsorError::Book { path: self.path.display().to_string(), source })
    }
}

/// One signature, as the book records it.
#[derive(Clone, Copy)]
struct Signature<'a> {
    user: i64,
    hash: &'a [u8; 32],
    model: &'a str,
    cost: u64,
    /// Unix seconds.
    at: u64,
}

enum Spend {
    AlreadySigned,
    Exhausted { left: u64 },
    Book(SponsorError),
}

/// The sponsor: the app's key, its policy and its quota book.
pub struct Sponsor {
    key: SigningKey,
    policy: SponsorPolicy,
    book: QuotaBook,
}

impl Sponsor {
    pub fn new(key: SigningKey, policy: SponsorPolicy, book: QuotaBook) -> Result<Sponsor, SponsorError> {
        if policy.period_s == 0 {
            return Err(SponsorError::Invalid("the quota period must be at least one second".into()));
        }
        Ok(Sponsor { key, policy, book })
    }

    /// The account the proxy charges: the app's key.
    pub fn account(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Checks the request and signs its authorisation (see the module's doc).
    pub fn authorise(&self, req: &SponsorRequest, now: u64) -> Result<Sponsored, SponsorError> {
        let p = &self.policy;
        let user = crate::telegram::validate(&req.init_data, &p.bot_token, now, p.max_age_s)?;
        let hash: [u8; 32] = hex::decode(&req.request_hash).ok().and_then(|h| h.try_into().ok()).ok_or_else(|| {
            SponsorError::Invalid("request_hash: expected 64 hex digits (SHA-256 of the sealed request)".into())
        })?;
        if req.model.is_empty() || req.model.len() > MAX_MODEL {
            return Err(SponsorError::Invalid(format!("model: expected 1 to {MAX_MODEL} bytes")));
        }
        if !p.models.is_empty() && !p.models.contains(&req.model) {
            return Err(SponsorError::Invalid(format!(
                "model {:?} is not sponsored here; sponsored: {}",
                req.model,
                p.models.join(", ")
            )));
        }
        if req.max_cost > p.max_cost || req.max_cost.0 == 0 {
            return Err(SponsorError::Invalid(format!(
                "max_cost: expected 1 to {} nanoTON per request, found {}",
                p.max_cost.0, req.max_cost.0
            )));
        }
        let period = now / p.period_s;
        let left = self
            .book
            .spend(
                &Signature { user: user.user_id, hash: &hash, model: &req.model, cost: req.max_cost.0, at: now },
                p.quota.0,
                period,
            )
            .map_err(|e| match e {
                Spend::AlreadySigned => SponsorError::AlreadySigned(req.request_hash.clone()),
                Spend::Exhausted { left } => SponsorError::QuotaExhausted {
                    user: user.user_id,
                    quota: p.quota.0,
                    left,
                    asked: req.max_cost.0,
                    renews: (period + 1).saturating_mul(p.period_s),
                },
                Spend::Book(e) => e,
            })?;
        let auth = ClientAuthorization::sign(&self.key, &hash, req.max_cost);
        Ok(Sponsored {
            headers: auth.header_values().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            user_id: user.user_id,
            quota_left: NanoTon(left),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `POST /v1/sponsor`: a [`SponsorRequest`] in, [`Sponsored`] out.
pub fn router(sponsor: Arc<Sponsor>) -> Router {
    Router::new()
        .route("/v1/sponsor", post(sponsor_request))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(sponsor)
}

/// Serves the sponsor on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sponsor: Arc<Sponsor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(sponsor)).with_graceful_shutdown(shutdown).await
}

async fn sponsor_request(State(s): State<Arc<Sponsor>>, body: axum::body::Bytes) -> Response {
    let req: SponsorRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return SponsorError::Invalid(format!("request body: {e}")).into_response(),
    };
    // The quota book commits to disk: off the async threads.
    match tokio::task::spawn_blocking(move || s.authorise(&req, unix_now())).await {
        Ok(Ok(sponsored)) => axum::Json(sponsored).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => SponsorError::Invalid("the sponsor failed".into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TOKEN: &str = "1:test-token";
    const NOW: u64 = 1_800_000_000;

    fn init_data(user: i64, auth_date: u64) -> String {
        let fields: BTreeMap<String, String> =
            [("user".to_string(), format!(r#"{{"id":{user}}}"#)), ("auth_date".to_string(), auth_date.to_string())]
                .into();
        crate::telegram::sign(&fields, TOKEN)
    }

    fn sponsor(dir: &Path) -> Sponsor {
        let policy = SponsorPolicy {
            bot_token: TOKEN.into(),
            max_age_s: 3600,
            quota: NanoTon(100),
            period_s: 86_400,
            max_cost: NanoTon(60),
            models: vec!["m".into()],
        };
        Sponsor::new(SigningKey::from_bytes(&[5; 32]), policy, QuotaBook::open(&dir.join("book.sqlite")).unwrap())
            .unwrap()
    }

    fn ask(user: i64, hash: u8, cost: u64) -> SponsorRequest {
        SponsorRequest {
            init_data: init_data(user, NOW - 10),
            request_hash: hex::encode([hash; 32]),
            model: "m".into(),
            max_cost: NanoTon(cost),
        }
    }

    #[test]
    fn a_user_is_authorised_within_its_quota_once_per_hash_and_the_book_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("cocoon-sponsor-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = sponsor(&dir);
        let ok = s.authorise(&ask(1, 1, 60), NOW).unwrap();
        assert_eq!((ok.user_id, ok.quota_left), (1, NanoTon(40)));
        // The signature is the one the proxy checks.
        let auth = ClientAuthorization::from_headers(|h| ok.headers.get(h).map(String::as_str)).unwrap();
        assert_eq!((auth.client_key, auth.max_cost), (s.account(), NanoTon(60)));
        assert!(matches!(s.authorise(&ask(1, 1, 10), NOW), Err(SponsorError::AlreadySigned(_))));
        assert!(matches!(s.authorise(&ask(1, 2, 50), NOW), Err(SponsorError::QuotaExhausted { left: 40, .. })));
        assert_eq!(s.authorise(&ask(2, 3, 50), NOW).unwrap().quota_left, NanoTon(50), "another user has its own");
        drop(s);
        let s = sponsor(&dir);
        assert!(matches!(s.authorise(&ask(1, 4, 50), NOW), Err(SponsorError::QuotaExhausted { left: 40, .. })));
        assert!(matches!(s.authorise(&ask(1, 1, 10), NOW), Err(SponsorError::AlreadySigned(_))));
        // The next period renews it.
        let later = SponsorRequest { init_data: init_data(1, NOW + 86_400), ..ask(1, 5, 50) };
        assert_eq!(s.authorise(&later, NOW + 86_400).unwrap().quota_left, NanoTon(50));
    }

    #[test]
    fn bad_requests_are_refused_each_with_its_own_code() {
        let dir = std::env::temp_dir().join(format!("cocoon-sponsor-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = sponsor(&dir);
        let code = |r: SponsorRequest| s.authorise(&r, NOW).unwrap_err().status_and_code();
        let forged = SponsorRequest { init_data: init_data(1, NOW).replace("%3A1%7D", "%3A2%7D"), ..ask(1, 1, 10) };
        assert_eq!(code(forged), (StatusCode::UNAUTHORIZED, ErrorCode::InitDataInvalid));
        let stale = SponsorRequest { init_data: init_data(1, NOW - 3601), ..ask(1, 1, 10) };
        assert_eq!(code(stale), (StatusCode::UNAUTHORIZED, ErrorCode::InitDataExpired));
        assert_eq!(code(SponsorRequest { request_hash: "ab".into(), ..ask(1, 1, 10) }).1, ErrorCode::InvalidRequest);
        assert_eq!(code(SponsorRequest { model: "other".into(), ..ask(1, 1, 10) }).1, ErrorCode::InvalidRequest);
        assert_eq!(code(ask(1, 1, 61)).1, ErrorCode::InvalidRequest, "above the per-request maximum");
        assert_eq!(code(ask(1, 1, 0)).1, ErrorCode::InvalidRequest);
        assert_eq!(s.book.spent(1, NOW / 86_400).unwrap(), 0, "nothing refused was spent");
    }
}
