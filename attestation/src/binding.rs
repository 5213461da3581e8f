//! The report-data binding between claims and hardware evidence.

use sha2::{Digest, Sha256, Sha512};

/// `SHA-512(claims [|| nonce])`: the 64 bytes handed to the hardware.
pub fn report_data(claims: &[u8], nonce: Option<&[u8]>) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(claims);
    if let Some(n) = nonce {
        h.update(n);
    }
    h.finalize().into()
}

/// Parses `nonce=HEX` from a query string (`GET /attestation?nonce=…`).
pub fn parse_nonce_query(query: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    let Some(q) = query else { return Ok(None) };
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if k == "nonce" {
            let n = hex::decode(v.as_bytes()).map_err(|e| format!("nonce is not hex: {e}"))?;
            if n.is_empty() || n.len() > cocoon_protocol::limits::MAX_NONCE {
                return Err(format!(
                    "nonce must be 1 to {} bytes, found {}",
                    cocoon_protocol::limits::MAX_NONCE,
                    n.len()
                ));
            }
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// The 32-byte nonce a GPU attestation report is requested with, so that the
/// GPU's report binds the same claims (and verifier nonce) as the CPU's, and
/// the CC mode the document states for that GPU: the GPU's signed report
/// does not carry the mode, so this is what keeps a relay from editing it.
pub fn gpu_nonce(claims: &[u8], nonce: Option<&[u8]>, cc_mode: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cocoon gpu nonce v2");
    // Fixed-length, so the mode that follows cannot shift into it.
    h.update(report_data(claims, nonce));
    h.update(cc_mode.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_changes_binding() {
        assert_ne!(report_data(b"c", None), report_data(b"c", Some(b"n")));
        // SHA-512("abc"), FIPS 180-2 example.
        assert_eq!(hex::encode(&report_data(b"ab", Some(b"c"))[..8]), "ddaf35a193617aba");
        assert_ne!(gpu_nonce(b"c", None, "on"), gpu_nonce(b"c", Some(b"n"), "on"));
        assert_ne!(gpu_nonce(b"c", None, "on"), gpu_nonce(b"c", None, "devtools"));
    }

    #[test]
    fn nonce_queries() {
        assert_eq!(parse_nonce_query(None), Ok(None));
        assert_eq!(parse_nonce_query(Some("a=1&nonce=0aff")), Ok(Some(vec![0x0a, 0xff])));
        assert!(parse_nonce_query(Some("nonce=zz")).is_err());
        assert!(parse_nonce_query(Some("nonce=")).is_err());
        assert!(parse_nonce_query(Some(&format!("nonce={}", "00".repeat(65)))).is_err());
    }
}
