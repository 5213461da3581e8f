//! Prometheus metrics of the shim.

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
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub rejected: Family<Reason, Counter>,
    pub limits: Family<LimitLabels, Gauge>,
    pub bytes_to_enclave: Counter,
    pub bytes_from_enclave: Counter,
    /// Requests from the moment their headers are read until their response ends.
    pub in_flight: Gauge,
    /// Request bodies being received.
    pub uploads: Gauge,
    /// Requests holding a slot towards the enclave.
    pub forwarding: Gauge,
    pub connections: Gauge,
    pub enclave_up: Gauge,
    pub resident_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cocoon_host");
        let m = Metrics {
            requests: Family::default(),
            rejected: Family::default(),
            limits: Family::default(),
            bytes_to_enclave: Counter::default(),
            bytes_from_enclave: Counter::default(),
            in_flight: Gauge::default(),
            uploads: Gauge::default(),
            forwarding: Gauge::default(),
            connections: Gauge::default(),
            enclave_up: Gauge::default(),
            resident_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered, by endpoint and status", m.requests.clone());
        registry.register("rejected", "Connections and requests refused or cut off, by reason", m.rejected.clone());
        registry.register("limit", "Each configured limit", m.limits.clone());
        registry.register("bytes_to_enclave", "Sealed request bytes forwarded", m.bytes_to_enclave.clone());
        registry.register("bytes_from_enclave", "Response bytes forwarded", m.bytes_from_enclave.clone());
        registry.register("in_flight", "Requests from their headers to the end of their response", m.in_flight.clone());
        registry.register("uploads", "Request bodies being received", m.uploads.clone());
        registry.register("forwarding", "Requests holding a slot towards the enclave", m.forwarding.clone());
        registry.register("connections", "Client connections open", m.connections.clone());
        registry.register("enclave_up", "1 when the last contact with the enclave succeeded", m.enclave_up.clone());
        registry.register("resident_bytes", "Resident memory of the shim", m.resident_bytes.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    pub fn render(&self) -> String {
        if let Some(rss) = cocoon_runtime::memory::resident_bytes() {
            self.resident_bytes.set(rss as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
