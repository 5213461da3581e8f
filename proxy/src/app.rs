//! The proxy's state, shared by every handler: its registry of workers, its
//! ledger, its identity and terms, limits and metrics, what requests in
//! flight have reserved, and the replay window; and the reservation rule.

use std::sync::{Arc, Mutex};

use axum::response::Response;
use tokio::sync::Semaphore;
use tracing::warn;

use cocoon_client::http::HttpClient;
use cocoon_protocol::authorization::VerifiedAuthorization;
use cocoon_protocol::proxy_api::ErrorCode;
use cocoon_protocol::{Commission, NanoTon};

use crate::config::{Limits, secs};
use crate::identity::Identity;
use crate::ledger::Ledger;
use crate::metrics::{Metrics, RequestLabels};
use crate::registry::Registry;
use crate::replay::ReplayWindow;
use crate::reservation::{Reservation, Reservations, ReserveError};

/// Most request hashes remembered for replay refusal.
const MAX_REMEMBERED: usize = 1 << 20;

pub struct App {
    pub registry: Arc<Registry>,
    pub ledger: Arc<Ledger>,
    pub identity: Identity,
    pub commission: Commission,
    pub credit_limit: NanoTon,
    pub limits: Limits,
    pub metrics: Metrics,
    pub http: HttpClient,
    pub in_flight: Arc<Semaphore>,
    pub reservations: Arc<Reservations>,
    pub replays: Mutex<ReplayWindow>,
    /// Payments on TON, when configured.
    pub payments: Option<Arc<crate::payments::Payments>>,
    pub(crate) joins: Mutex<(u64, u32)>,
}

impl App {
    pub fn new(
        registry: Arc<Registry>,
        ledger: Arc<Ledger>,
        identity: Identity,
        commission: Commission,
        credit_limit: NanoTon,
        limits: Limits,
        payments: Option<Arc<crate::payments::Payments>>,
    ) -> Arc<Self> {
        let mut metrics = Metrics::default();
        if let Some(p) = &payments {
            metrics.register_settlement(&p.metrics);
        }
        Arc::new(App {
            registry,
            ledger,
            identity,
            commission,
            credit_limit,
            metrics,
            http: HttpClient::with_connect_timeout(secs(limits.connect_timeout_s)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            reservations: Arc::new(Reservations::default()),
            replays: Mutex::new(ReplayWindow::new(secs(limits.replay_window_s), MAX_REMEMBERED)),
            joins: Mutex::new((0, 0)),
            payments,
            limits,
        })
    }

    pub fn count(&self, endpoint: &'static str, r: &Response) {
        self.metrics.requests.get_or_create(&RequestLabels { endpoint, status: r.status().as_u16() }).inc();
    }

    /// Reserves the request's maximum cost against money the proxy can
    /// collect: the account's balance (operator deposits and vouchers, less
    /// charges) plus credit of at most `credit_limit` and never more than the
    /// account's open channels hold on chain beyond their vouchers, less what
    /// its requests in flight may still cost. A key with no deposit and no
    /// channel gets no credit at all.
    pub fn reserve(self: &Arc<Self>, auth: &VerifiedAuthorization) -> Result<Reservation, ReserveError> {
        let ledger_down = |e: crate::ledger::LedgerError| {
            warn!("reading an account: {e}");
            ReserveError::LedgerUnavailable
        };
        let (key, max_cost) = (*auth.client_key(), auth.max_cost());
        let (account, collateral) = self.ledger.account_and_collateral(&key).map_err(ledger_down)?;
        let credit = self.credit_limit.min(collateral);
        let available = account.balance() + credit.0 as i128;
        self.reservations.reserve(key, max_cost, available).map_err(|pending| {
            self.metrics.refuse(ErrorCode::InsufficientFunds.as_str());
            ReserveError::InsufficientFunds {
                max_cost,
                account: hex::encode(key),
                available: (available - pending as i128).max(0),
                balance: account.balance(),
                credit,
                pending,
            }
        })
    }
}
