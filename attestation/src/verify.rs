//! Evidence verification: signature, binding, policy, in that order.

use serde::Serialize;

use cocoon_protocol::evidence::EvidenceDocument;
use cocoon_protocol::ohttp::KeyConfig;
use cocoon_protocol::{Claims, Platform};

use crate::{AttestationError, Policy, report_data, simulated};

/// One policy rule and how the evidence fared.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    pub rule: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Evidence that passed: only now may its keys be used.
#[derive(Debug, Clone)]
pub struct VerifiedWorker {
    pub platform: Platform,
    pub claims: Claims,
    pub key_configs: Vec<KeyConfig>,
    pub receipt_key: [u8; 32],
    pub nonce: Option<Vec<u8>>,
    pub rules: Vec<RuleOutcome>,
}

impl VerifiedWorker {
    /// A JSON-friendly summary for `cocoon attest --json`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "platform": self.platform,
            "image_version": self.claims.image_version,
            "model": self.claims.model.as_ref().map(|m| serde_json::json!({
                "id": m.id, "digest": hex::encode(&m.digest)
            })),
            "config_digest": hex::encode(&self.claims.config_digest),
            "issued_at": self.claims.issued_at,
            "receipt_key": hex::encode(self.receipt_key),
            "ohttp_key_ids": self.key_configs.iter().map(|k| k.key_id).collect::<Vec<_>>(),
            "nonce": self.nonce.as_ref().map(hex::encode),
            "rules": self.rules,
        })
    }
}

/// Verifies an evidence document under `policy`.
///
/// `nonce` is the verifier's own nonce when it asked for fresh evidence;
/// `now` is Unix time in seconds (explicit so that tests and audits can fix it).
pub fn verify_evidence(
    bytes: &[u8],
    policy: &Policy,
    nonce: Option<&[u8]>,
    now: u64,
) -> Result<VerifiedWorker, AttestationError> {
    let (doc, claims) = EvidenceDocument::decode(bytes)?;
    let mut rules = Vec::new();
    let mut pass = |rule: &'static str, detail: String| rules.push(RuleOutcome { rule, passed: true, detail });

    // 1. The platform must be one the policy accepts at all.
    match doc.platform {
        Platform::Simulated if !policy.allow_simulated => {
            return Err(AttestationError::Policy {
                rule: "allow_simulated",
                detail: "the evidence is simulated (signed in software, proves nothing about the machine); \
                         accepting it needs the explicit development option --insecure-simulated"
                    .into(),
            });
        }
        Platform::Simulated => pass("allow_simulated", "simulated evidence accepted by a development policy".into()),
        p if !policy.allowed_platforms.contains(&p) => {
            return Err(AttestationError::Policy {
                rule: "allowed_platforms",
                detail: format!("platform {p} is not in {:?}", policy.allowed_platforms),
            });
        }
        p => pass("allowed_platforms", format!("{p} is allowed")),
    }

    // 2. The platform's signature over its report.
    let reported = match doc.platform {
        Platform::Simulated => simulated::verify(&doc.quote_or_report)?,
        p => {
            return Err(AttestationError::Unsupported {
                platform: p,
                reason: "hardware quote verification is not part of this build yet".into(),
            });
        }
    };
    pass("signature", format!("{} report signature verified", doc.platform));

    // 3. The report data binds exactly these claims (and the nonce).
    let expected = report_data(&doc.claims, doc.nonce.as_deref().map(|n| n.as_slice()));
    if reported != expected {
        return Err(AttestationError::ReportDataMismatch {
            expected: hex::encode(expected),
            found: hex::encode(reported),
        });
    }
    pass("report_data", "SHA-512(claims [|| nonce]) matches the report".into());
    if let Some(want) = nonce {
        let got = doc.nonce.as_deref().map(|n| n.as_slice());
        if got != Some(want) {
            return Err(AttestationError::NonceMismatch {
                expected: hex::encode(want),
                found: got.map(hex::encode).unwrap_or_else(|| "no nonce".into()),
            });
        }
        pass("nonce", "evidence is fresh for our nonce".into());
    }

    // 4. Policy on the claims.
    if let Some(want) = &policy.required_model_digest {
        let got = claims.model.as_ref().map(|m| hex::encode(&m.digest));
        if got.as_deref() != Some(want.to_ascii_lowercase().as_str()) {
            return Err(AttestationError::Policy {
                rule: "required_model_digest",
                detail: format!("expected {want}, found {}", got.unwrap_or_else(|| "no model".into())),
            });
        }
        pass("required_model_digest", want.clone());
    }
    if !policy.allowed_config_digests.is_empty() {
        let got = hex::encode(&claims.config_digest);
        if !policy.allowed_config_digests.iter().any(|d| d.eq_ignore_ascii_case(&got)) {
            return Err(AttestationError::Policy {
                rule: "allowed_config_digests",
                detail: format!("expected one of {:?}, found {got}", policy.allowed_config_digests),
            });
        }
        pass("allowed_config_digests", got);
    }
    if let Some(max) = policy.max_evidence_age_secs {
        let age = now.saturating_sub(claims.issued_at);
        if age > max {
            return Err(AttestationError::Policy {
                rule: "max_evidence_age_secs",
                detail: format!("claims issued {age} s ago, the policy allows at most {max} s"),
            });
        }
        pass("max_evidence_age_secs", format!("issued {age} s ago (max {max} s)"));
    }

    // 5. Only now are the keys inside the claims trusted.
    let key_configs = KeyConfig::decode_list(&claims.ohttp_keys).map_err(|e| AttestationError::Malformed {
        platform: doc.platform,
        reason: format!("claims ohttp_keys: {e}"),
    })?;
    let receipt_key = claims.receipt_key_bytes();
    Ok(VerifiedWorker {
        platform: doc.platform,
        claims,
        key_configs,
        receipt_key,
        nonce: nonce.map(<[u8]>::to_vec),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use cocoon_protocol::evidence::{CLAIMS_VERSION, EVIDENCE_VERSION};
    use cocoon_protocol::ohttp::GatewayKey;
    use cocoon_protocol::{ModelClaim, Platform};

    use super::*;
    use crate::EvidenceProducer;
    use crate::simulated::SimulatedProducer;

    const ISSUED: u64 = 1_800_000_000;

    fn evidence(nonce: Option<&[u8]>) -> Vec<u8> {
        let claims = Claims {
            version: CLAIMS_VERSION,
            platform: Platform::Simulated,
            ohttp_keys: ByteBuf::from(KeyConfig::encode_list(&[GatewayKey::generate(1).config().clone()])),
            receipt_key: ByteBuf::from(vec![2; 32]),
            model: Some(ModelClaim { id: "m".into(), digest: ByteBuf::from(vec![0xab; 32]) }),
            config_digest: ByteBuf::from(vec![0xcd; 32]),
            image_version: "t".into(),
            issued_at: ISSUED,
        }
        .encode();
        let ev = SimulatedProducer::new().produce(&report_data(&claims, nonce)).unwrap();
        EvidenceDocument {
            version: EVIDENCE_VERSION,
            platform: Platform::Simulated,
            claims: ByteBuf::from(claims),
            nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
            quote_or_report: ByteBuf::from(ev.quote_or_report),
            certificates: None,
            event_log: None,
            gpu: None,
        }
        .encode()
    }

    fn refusal(r: Result<VerifiedWorker, AttestationError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn accepts_under_a_development_policy_and_reports_each_rule() {
        let v =
            verify_evidence(&evidence(Some(b"n1")), &Policy::insecure_simulated(), Some(b"n1"), ISSUED + 5).unwrap();
        let rules: Vec<_> = v.rules.iter().map(|r| r.rule).collect();
        assert_eq!(rules, ["allow_simulated", "signature", "report_data", "nonce", "max_evidence_age_secs"]);
        assert_eq!(v.receipt_key, [2; 32]);
    }

    #[test]
    fn refusals_name_the_rule_and_the_values() {
        let dev = Policy::insecure_simulated();
        let e = refusal(verify_evidence(&evidence(Some(b"n1")), &dev, Some(b"n2"), ISSUED));
        assert_eq!(e, "nonce: expected 6e32, evidence has 6e31");
        let e = refusal(verify_evidence(&evidence(None), &dev, Some(b"n2"), ISSUED));
        assert_eq!(e, "nonce: expected 6e32, evidence has no nonce");
        let e = refusal(verify_evidence(&evidence(None), &dev, None, ISSUED + 90_000));
        assert!(
            e.contains("max_evidence_age_secs: claims issued 90000 s ago, the policy allows at most 86400 s"),
            "{e}"
        );
        let p = Policy { required_model_digest: Some("00".repeat(32)), ..dev.clone() };
        let e = refusal(verify_evidence(&evidence(None), &p, None, ISSUED));
        assert!(e.contains("required_model_digest: expected 0000") && e.contains(&"ab".repeat(32)), "{e}");
        let p = Policy { allowed_config_digests: vec!["11".repeat(32)], ..dev.clone() };
        assert!(refusal(verify_evidence(&evidence(None), &p, None, ISSUED)).contains("allowed_config_digests"));
        let e = refusal(verify_evidence(&evidence(None), &Policy::default(), None, ISSUED));
        assert!(e.contains("allow_simulated"), "{e}");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let good = evidence(Some(b"n"));
        let dev = Policy::insecure_simulated();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(verify_evidence(&bad, &dev, Some(b"n"), ISSUED).is_err(), "flip at {i} accepted");
        }
    }
}
