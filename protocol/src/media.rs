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
