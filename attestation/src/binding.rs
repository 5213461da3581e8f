//! The report-data binding between claims and hardware evidence.

use sha2::{Digest, Sha512};

/// `SHA-512(claims [|| nonce])`: the 64 bytes handed to the hardware.
pub fn report_data(claims: &[u8], nonce: Option<&[u8]>) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(claims);
    if let Some(n) = nonce {
        h.update(n);
    }
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
    }
}
