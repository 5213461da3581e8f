//! What verifiers read from an X.509 certificate for their messages and
//! their time checks: its name and its validity window.

use crate::hexfmt::rfc3339;

/// The subject's common name, if it has one.
pub fn common_name(cert: &x509_cert::Certificate) -> Option<String> {
    cert.tbs_certificate().subject().common_name().ok().flatten().map(|c| c.value().into_owned())
}

/// Whether `now` (Unix seconds) is inside the certificate's validity window;
/// the error names the certificate, the window and the time.
pub fn check_validity(cert: &x509_cert::Certificate, name: &str, now: u64) -> Result<(), String> {
    let v = cert.tbs_certificate().validity();
    let from = v.not_before.to_unix_duration().as_secs();
    let to = v.not_after.to_unix_duration().as_secs();
    if now < from || now > to {
        return Err(format!(
            "certificate {name} is valid from {} to {}; verification time {} is outside it",
            rfc3339(from),
            rfc3339(to),
            rfc3339(now)
        ));
    }
    Ok(())
}
