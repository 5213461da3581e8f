//! Media types and header names on the wire.

pub const OHTTP_KEYS: &str = "application/ohttp-keys";
pub const OHTTP_REQUEST: &str = "message/ohttp-req";
pub const OHTTP_RESPONSE: &str = "message/ohttp-res";
pub const OHTTP_CHUNKED_REQUEST: &str = "message/ohttp-chunked-req";
pub const OHTTP_CHUNKED_RESPONSE: &str = "message/ohttp-chunked-res";
pub const EVIDENCE: &str = "application/cbor";
/// Header (non-streamed responses) or trailer (streamed responses) that carries
/// the base64 COSE_Sign1 usage receipt, outside the sealed body.
pub const RECEIPT_HEADER: &str = "cocoon-receipt";
/// Inner (sealed) request header: the most the answer may cost at the worker's
/// prices, in nanoTON. The enclave stops generating before it is exceeded.
pub const MAX_WORKER_COST_HEADER: &str = "cocoon-max-worker-cost";
/// Outer request header the proxy adds when it forwards a sealed request: the
/// most the answer may cost at the worker's prices (nanoTON), the worker's
/// share of what the client signed to pay. The enclave applies the smaller of
/// this and the sealed [`MAX_WORKER_COST_HEADER`], and its receipt states the
/// cap it applied, so an overrun is attributable: the proxy can only lower
/// what a client asked for, and a client cannot raise what the proxy reserved.
pub const WORKER_CAP_HEADER: &str = "cocoon-worker-cap";
/// Trailer (or header) the proxy adds: what the client was charged, in nanoTON.
pub const CHARGE_HEADER: &str = "cocoon-charge";
/// Response header the proxy adds to a failover answer: the next worker to try.
pub const RETRY_WORKER_HEADER: &str = "cocoon-retry-worker";
/// Trailer the proxy ends a streamed answer with when the worker's stream
/// broke off or went silent (its value says how): the stream is cut short
/// (its sealed end is missing), nothing was charged for it, and a client that
/// received no content from it may send the request to another worker.
pub const WORKER_FAILED_TRAILER: &str = "cocoon-worker-failed";
/// Request header naming the worker a sealed request is for (through a proxy).
pub const WORKER_HEADER: &str = "cocoon-worker";

/// Whether a `content-type` value names `expected`: media types compare
/// case-insensitively and may carry parameters (RFC 9110, section 8.3.1).
pub fn media_is(value: &str, expected: &str) -> bool {
    value.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_compare_per_rfc_9110() {
        assert!(media_is("message/ohttp-req", OHTTP_REQUEST));
        assert!(media_is("MESSAGE/OHTTP-REQ", OHTTP_REQUEST));
        assert!(media_is("message/ohttp-req; charset=x", OHTTP_REQUEST));
        assert!(media_is(" Message/Ohttp-Req ;q=1", OHTTP_REQUEST));
        assert!(!media_is("message/ohttp-reqx", OHTTP_REQUEST));
        assert!(!media_is("", OHTTP_REQUEST));
    }
}
