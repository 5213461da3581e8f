//! A client's signed authorisation of one sealed request, sent in clear to the
//! proxy beside the sealed bytes.
//!
//! The proxy cannot read the request, so the client signs what the proxy must
//! know to charge it: the SHA-256 of the sealed bytes and the most it agrees
//! to pay. The signature binds the client's account (its Ed25519 key) to
//! exactly those bytes, so a relay can neither spend the account on other
//! requests nor raise the limit.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::price::NanoTon;

/// Header names of the authorisation (hex key and signature, decimal amount).
pub const CLIENT_KEY_HEADER: &str = "cocoon-client-key";
pub const MAX_COST_HEADER: &str = "cocoon-max-cost";
pub const SIGNATURE_HEADER: &str = "cocoon-client-signature";

const DOMAIN: &[u8] = b"cocoon client request v1\0";

/// The bytes a client signs for one sealed request.
pub fn signed_message(request_hash: &[u8; 32], max_cost: NanoTon) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 40);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(request_hash);
    m.extend_from_slice(&max_cost.0.to_be_bytes());
    m
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthorization {
    pub client_key: [u8; 32],
    pub max_cost: NanoTon,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error("header {header} is missing: the proxy charges only requests the client signed")]
    Missing { header: &'static str },
    #[error("header {header}: expected {expected}")]
    Malformed { header: &'static str, expected: &'static str },
    #[error("the client signature does not verify for this request's hash and maximum cost")]
    BadSignature,
}

impl ClientAuthorization {
    pub fn sign(key: &SigningKey, request_hash: &[u8; 32], max_cost: NanoTon) -> Self {
        ClientAuthorization {
            client_key: key.verifying_key().to_bytes(),
            max_cost,
            signature: key.sign(&signed_message(request_hash, max_cost)).to_bytes(),
        }
    }

    /// The three header values, in the order of the names above.
    pub fn header_values(&self) -> [(&'static str, String); 3] {
        [
            (CLIENT_KEY_HEADER, hex::encode(self.client_key)),
            (MAX_COST_HEADER, self.max_cost.0.to_string()),
            (SIGNATURE_HEADER, hex::encode(self.signature)),
        ]
    }

    /// Parses the headers; `get` returns a header's value if present.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, AuthorizationError> {
        let field = |header: &'static str| get(header).ok_or(AuthorizationError::Missing { header });
        let client_key = hex_array::<32>(field(CLIENT_KEY_HEADER)?)
            .ok_or(AuthorizationError::Malformed { header: CLIENT_KEY_HEADER, expected: "64 hex digits" })?;
        let max_cost = field(MAX_COST_HEADER)?.parse::<NanoTon>().map_err(|_| AuthorizationError::Malformed {
            header: MAX_COST_HEADER,
            expected: "a whole number of nanoTON",
        })?;
        let signature = hex_array::<64>(field(SIGNATURE_HEADER)?)
            .ok_or(AuthorizationError::Malformed { header: SIGNATURE_HEADER, expected: "128 hex digits" })?;
        Ok(ClientAuthorization { client_key, max_cost, signature })
    }

    /// Checks the signature over `request_hash` and this maximum cost; the
    /// proof that the account agreed to pay up to it for exactly those bytes.
    pub fn verify(&self, request_hash: &[u8; 32]) -> Result<VerifiedAuthorization, AuthorizationError> {
        let key = VerifyingKey::from_bytes(&self.client_key).map_err(|_| AuthorizationError::BadSignature)?;
        key.verify_strict(&signed_message(request_hash, self.max_cost), &Signature::from_bytes(&self.signature))
            .map_err(|_| AuthorizationError::BadSignature)?;
        Ok(VerifiedAuthorization { client_key: self.client_key, max_cost: self.max_cost, request_hash: *request_hash })
    }
}

/// A client's authorisation whose signature verified for one request hash. A
/// proof: only [`ClientAuthorization::verify`] builds one, so a function that
/// reserves or charges an account takes this, not the headers it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAuthorization {
    client_key: [u8; 32],
    max_cost: NanoTon,
    request_hash: [u8; 32],
}

impl VerifiedAuthorization {
    /// The account that signed.
    pub fn client_key(&self) -> &[u8; 32] {
        &self.client_key
    }

    /// The most the account agreed to pay for this request, commission included.
    pub fn max_cost(&self) -> NanoTon {
        self.max_cost
    }

    /// SHA-256 of the sealed bytes it covers.
    pub fn request_hash(&self) -> &[u8; 32] {
        &self.request_hash
    }
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_headers_round_trip_and_bind_hash_and_cost() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let auth = ClientAuthorization::sign(&key, &[1; 32], NanoTon(5000));
        let headers = auth.header_values();
        let parsed =
            ClientAuthorization::from_headers(|n| headers.iter().find(|(h, _)| *h == n).map(|(_, v)| v.as_str()))
                .unwrap();
        assert_eq!(parsed, auth);
        let proof = parsed.verify(&[1; 32]).unwrap();
        assert_eq!(
            (proof.client_key(), proof.max_cost(), proof.request_hash()),
            (&auth.client_key, NanoTon(5000), &[1; 32])
        );
        assert_eq!(parsed.verify(&[2; 32]), Err(AuthorizationError::BadSignature));
        let raised = ClientAuthorization { max_cost: NanoTon(5001), ..parsed.clone() };
        assert_eq!(raised.verify(&[1; 32]), Err(AuthorizationError::BadSignature));
        let other =
            ClientAuthorization { client_key: SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes(), ..parsed };
        assert_eq!(other.verify(&[1; 32]), Err(AuthorizationError::BadSignature));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        assert_eq!(
            ClientAuthorization::from_headers(|_| None),
            Err(AuthorizationError::Missing { header: CLIENT_KEY_HEADER })
        );
        let bad = |n: &str| match n {
            CLIENT_KEY_HEADER => Some("zz"),
            _ => Some("1"),
        };
        assert!(matches!(
            ClientAuthorization::from_headers(bad),
            Err(AuthorizationError::Malformed { header: CLIENT_KEY_HEADER, .. })
        ));
    }
}
