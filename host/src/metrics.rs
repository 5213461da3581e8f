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

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_to_enclave: Counter,
    pub bytes_from_enclave: Counter,
    pub in_flight: Gauge,
    pub enclave_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cocoon_host");
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_to_enclave = Counter::default();
        let bytes_from_enclave = Counter::default();
        let in_flight = Gauge::default();
        let enclave_up = Gauge::default();
        registry.register("requests", "Requests answered, by endpoint and status", requests.clone());
        registry.register("bytes_to_enclave", "Sealed request bytes forwarded", bytes_to_enclave.clone());
        registry.register("bytes_from_enclave", "Response bytes forwarded", bytes_from_enclave.clone());
        registry.register("in_flight", "Requests being forwarded now", in_flight.clone());
        registry.register("enclave_up", "1 when the last contact with the enclave succeeded", enclave_up.clone());
        Metrics { registry, requests, bytes_to_enclave, bytes_from_enclave, in_flight, enclave_up }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
