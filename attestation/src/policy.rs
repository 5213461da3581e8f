//! The acceptance policy a verifier applies (a TOML or JSON file).

use serde::{Deserialize, Serialize};

use cocoon_protocol::Platform;

use crate::AttestationError;

/// What a verifier accepts. The default accepts only hardware platforms and
/// refuses simulated evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Hardware platforms accepted.
    #[serde(default = "hardware_platforms")]
    pub allowed_platforms: Vec<Platform>,
    /// Accept simulated evidence (software-signed, proves nothing). Development only.
    #[serde(default)]
    pub allow_simulated: bool,
    /// Hex SHA-256 the claims' model digest must equal.
    #[serde(default)]
    pub required_model_digest: Option<String>,
    /// Hex SHA-256 values one of which the claims' config digest must equal (empty: any).
    #[serde(default)]
    pub allowed_config_digests: Vec<String>,
    /// Oldest acceptable key epoch, in seconds since the claims were issued.
    #[serde(default)]
    pub max_evidence_age_secs: Option<u64>,
}

fn hardware_platforms() -> Vec<Platform> {
    vec![Platform::Tdx, Platform::SevSnp]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_platforms: hardware_platforms(),
            allow_simulated: false,
            required_model_digest: None,
            allowed_config_digests: Vec::new(),
            max_evidence_age_secs: Some(24 * 3600),
        }
    }
}

impl Policy {
    /// The explicit development policy behind `--insecure-simulated`.
    pub fn insecure_simulated() -> Self {
        Policy { allow_simulated: true, ..Policy::default() }
    }

    /// Reads a policy from TOML (`.toml`) or JSON (anything else).
    pub fn from_file(path: &std::path::Path) -> Result<Self, AttestationError> {
        let err = |reason: String| AttestationError::PolicyFile { path: path.display().to_string(), reason };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > 1 << 20 {
            return Err(err(format!("{} bytes exceeds the limit of 1 MiB", meta.len())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| err(e.to_string()))
        } else {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_refuse_simulated_and_files_parse() {
        let p = Policy::default();
        assert!(!p.allow_simulated);
        assert!(!p.allowed_platforms.contains(&Platform::Simulated));
        let dir = std::env::temp_dir().join(format!("cocoon-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("p.toml");
        std::fs::write(&t, "allow_simulated = true\nallowed_platforms = [\"tdx\"]\n").unwrap();
        let p = Policy::from_file(&t).unwrap();
        assert!(p.allow_simulated);
        assert_eq!(p.allowed_platforms, vec![Platform::Tdx]);
        let j = dir.join("p.json");
        std::fs::write(&j, "{\"alow_simulated\": true}").unwrap();
        let e = Policy::from_file(&j).unwrap_err().to_string();
        assert!(e.contains("unknown field `alow_simulated`"), "{e}");
    }
}
