//! Prometheus metrics of the proxy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
    pub model: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    pub failovers: Counter,
    pub charges: Counter,
    pub charged_nanoton: Counter,
    pub commission_nanoton: Counter,
    pub answers_without_receipt: Counter,
    pub abandoned_charged: Counter,
    pub in_flight: Gauge,
    pub worker_in_flight: Family<WorkerLabels, Gauge>,
    pub worker_score_milli: Family<WorkerLabels, Gauge>,
    pub workers_admitted: Gauge,
    /// The market (`GET /v1/market`): a typical request's cost at the
    /// lowest, median and highest price, and capacity and load, per model.
    pub market_lowest_nanoton: Family<ModelLabels, Gauge>,
    pub market_median_nanoton: Family<ModelLabels, Gauge>,
    pub market_highest_nanoton: Family<ModelLabels, Gauge>,
    pub market_capacity: Family<ModelLabels, Gauge>,
    pub market_in_flight: Family<ModelLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cocoon_proxy");
        let m = Metrics {
            requests: Family::default(),
            refused: Family::default(),
            failovers: Counter::default(),
            charges: Counter::default(),
            charged_nanoton: Counter::default(),
            commission_nanoton: Counter::default(),
            answers_without_receipt: Counter::default(),
            abandoned_charged: Counter::default(),
            in_flight: Gauge::default(),
            worker_in_flight: Family::default(),
            worker_score_milli: Family::default(),
            workers_admitted: Gauge::default(),
            market_lowest_nanoton: Family::default(),
            market_median_nanoton: Family::default(),
            market_highest_nanoton: Family::default(),
            market_capacity: Family::default(),
            market_in_flight: Family::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered, by endpoint and status", m.requests.clone());
        registry.register("refused", "Sealed requests refused before forwarding, by reason", m.refused.clone());
        registry.register(
            "failovers",
            "Requests answered with a retryable error naming another worker",
            m.failovers.clone(),
        );
        registry.register("charges", "Verified receipts charged", m.charges.clone());
        registry.register("charged_nanoton", "nanoTON charged to clients", m.charged_nanoton.clone());
        registry.register("commission_nanoton", "nanoTON of commission kept", m.commission_nanoton.clone());
        registry.register(
            "answers_without_receipt",
            "Answers that carried no receipt (errors inside the seal): not charged",
            m.answers_without_receipt.clone(),
        );
        registry.register(
            "abandoned_charged",
            "Streams their client abandoned, charged from the receipt of what was generated",
            m.abandoned_charged.clone(),
        );
        registry.register("in_flight", "Sealed requests being forwarded now", m.in_flight.clone());
        registry.register("worker_in_flight", "Requests in flight per worker", m.worker_in_flight.clone());
        registry.register("worker_score_milli", "Reputation score per worker, x1000", m.worker_score_milli.clone());
        registry.register("workers_admitted", "Workers admitted now", m.workers_admitted.clone());
        for (name, help, family) in [
            (
                "market_lowest_nanoton",
                "A typical request's cost at the lowest price of the workers up",
                &m.market_lowest_nanoton,
            ),
            (
                "market_median_nanoton",
                "A typical request's cost at the median price of the workers up",
                &m.market_median_nanoton,
            ),
            (
                "market_highest_nanoton",
                "A typical request's cost at the highest price of the workers up",
                &m.market_highest_nanoton,
            ),
            ("market_capacity", "Requests the workers up serve at once", &m.market_capacity),
            ("market_in_flight", "Requests in flight at the workers up", &m.market_in_flight),
        ] {
            registry.register(name, format!("{help}, per model"), family.clone());
        }
        Metrics { registry, ..m }
    }
}

/// Settlement on TON: what the payments watcher and claims did.
#[derive(Default, Clone)]
pub struct SettlementMetrics {
    pub claims_paid: Counter,
    pub claims_late: Counter,
    pub claims_missed: Counter,
    pub claim_attempts_failed: Counter,
    pub channels_vanished: Counter,
    pub chain_errors: Counter,
    pub public_refused: Counter,
}

impl Metrics {
    /// Adds the settlement counters to what `/metrics` renders.
    pub fn register_settlement(&mut self, s: &SettlementMetrics) {
        let r = &mut self.registry;
        r.register("settlement_claims_paid", "Claims of closing channels that landed", s.claims_paid.clone());
        r.register(
            "settlement_claims_late",
            "Claims of closing channels that landed past half their window",
            s.claims_late.clone(),
        );
        r.register(
            "settlement_claims_missed",
            "Channels that closed with vouchers the proxy did not claim",
            s.claims_missed.clone(),
        );
        r.register(
            "settlement_claim_attempts_failed",
            "Claim attempts that failed (retried)",
            s.claim_attempts_failed.clone(),
        );
        r.register(
            "settlement_channels_vanished",
            "Passes that found a client's channel missing from the chain",
            s.channels_vanished.clone(),
        );
        r.register("settlement_chain_errors", "Chain-API errors while watching channels", s.chain_errors.clone());
        r.register(
            "settlement_public_chain_refused",
            "Public requests refused because their chain-API budget was spent",
            s.public_refused.clone(),
        );
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}

impl Metrics {
    /// Replaces the market gauges (a model no worker serves any more disappears).
    pub fn set_market(&self, market: &cocoon_protocol::proxy_api::Market) {
        let families = [
            &self.market_lowest_nanoton,
            &self.market_median_nanoton,
            &self.market_highest_nanoton,
            &self.market_capacity,
            &self.market_in_flight,
        ];
        for f in families {
            f.clear();
        }
        for m in &market.models {
            let labels = ModelLabels { model: m.model.clone() };
            let set = |f: &Family<ModelLabels, Gauge>, v: u64| {
                f.get_or_create(&labels).set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            set(&self.market_lowest_nanoton, m.lowest.typical_cost.0);
            set(&self.market_median_nanoton, m.median.typical_cost.0);
            set(&self.market_highest_nanoton, m.highest.typical_cost.0);
            set(&self.market_capacity, u64::from(m.capacity));
            set(&self.market_in_flight, u64::from(m.in_flight));
        }
    }
}
