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

/// The 32-byte nonce a GPU attestation report is requested with, so that the
/// GPU's report binds the same claims (and verifier nonce) as the CPU's.
pub fn gpu_nonce(claims: &[u8], nonce: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cocoon gpu nonce v1");
    h.update(report_data(claims, nonce));
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
        assert_ne!(gpu_nonce(b"c", None), gpu_nonce(b"c", Some(b"n")));
    }
}
