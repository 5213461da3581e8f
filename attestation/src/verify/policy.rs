//! The acceptance policy a verifier applies (a TOML or JSON file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cocoon_protocol::Platform;

use crate::AttestationError;
use crate::gpu_reference::GpuReferenceValues;
use crate::reference::ReferenceValues;
use crate::revocation::RevocationPolicy;
use crate::snp::SnpTcb;

/// What a verifier accepts. The default accepts only hardware platforms whose
/// measurements match reference values, refuses debug guests and simulated
/// evidence, and wants an up-to-date TDX TCB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Hardware platforms accepted.
    #[serde(default = "hardware_platforms")]
    pub allowed_platforms: Vec<Platform>,
    /// An explicit development policy: debug TDs and debug-policy SNP guests are
    /// accepted. Never set it for production traffic.
    #[serde(default)]
    pub development: bool,
    /// Accept simulated evidence (software-signed, proves nothing). Development only.
    #[serde(default)]
    pub allow_simulated: bool,
    /// Sets of launch measurements (the JSON `make measure` prints); the
    /// evidence must match one set for its platform entirely.
    #[serde(default)]
    pub reference_values: Vec<ReferenceValues>,
    /// Files holding reference values, relative to the policy file; read into
    /// `reference_values` when the policy is loaded.
    #[serde(default, skip_serializing)]
    pub reference_value_files: Vec<PathBuf>,
    /// Accept hardware evidence with no reference values to compare against:
    /// any code on genuine hardware passes. For inspection only.
    #[serde(default)]
    pub allow_any_measurement: bool,
    /// Hex SHA-256 the claims' model digest must equal.
    #[serde(default)]
    pub required_model_digest: Option<String>,
    /// Hex SHA-256 values one of which the claims' config digest must equal (empty: any).
    #[serde(default)]
    pub allowed_config_digests: Vec<String>,
    /// Oldest acceptable key epoch, in seconds since the claims were issued.
    #[serde(default)]
    pub max_evidence_age_secs: Option<u64>,
    /// Refuse cached evidence: only evidence made for the verifier's own nonce passes.
    #[serde(default)]
    pub require_nonce: bool,
    #[serde(default)]
    pub tdx: TdxPolicy,
    #[serde(default)]
    pub sev_snp: SnpPolicy,
    #[serde(default)]
    pub gpu: GpuPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Intel TCB statuses accepted (`UpToDate`, `SWHardeningNeeded`, `ConfigurationNeeded`,
    /// `ConfigurationAndSWHardeningNeeded`, `OutOfDate`, `OutOfDateConfigurationNeeded`...).
    #[serde(default = "up_to_date")]
    pub allowed_tcb_statuses: Vec<String>,
    /// Intel security advisories (`INTEL-SA-…`) that refuse a platform even when its status is allowed.
    #[serde(default)]
    pub refused_advisories: Vec<String>,
    /// Component-wise minimum of the quote's TEE_TCB_SVN (16 numbers).
    #[serde(default)]
    pub min_tee_tcb_svn: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Component-wise minimum of the reported TCB (the one the VCEK vouches for).
    #[serde(default)]
    pub min_reported_tcb: Option<SnpTcb>,
    /// Minimum guest SVN.
    #[serde(default)]
    pub min_guest_svn: u32,
    /// Guests whose policy allows a migration agent can be exported by it.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// Guests whose policy allows simultaneous multithreading on the host.
    #[serde(default = "yes")]
    pub allow_smt: bool,
    /// Highest VMPL the report may come from (0: the guest's most privileged level).
    #[serde(default)]
    pub max_vmpl: u32,
}

/// NVIDIA GPU confidential-computing requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    #[serde(default)]
    pub required: bool,
    /// The GPU must be in CC mode "on" (not "off" and not "devtools").
    #[serde(default = "yes")]
    pub require_cc_mode: bool,
    /// Accepted GPU generations (`HOPPER`, `BLACKWELL`; empty: any).
    #[serde(default)]
    pub allowed_architectures: Vec<String>,
    /// Accepted chips, the GPU class a proxy routes on (`GH100` for H100 and
    /// H200, `GB100`, `GB202`...; empty: any). A runner whose policy requires
    /// GPUs asks its proxy for workers with these chips.
    #[serde(default)]
    pub allowed_chips: Vec<String>,
    #[serde(default)]
    pub min_driver_version: Option<String>,
    /// Accepted VBIOS versions (empty: any).
    #[serde(default)]
    pub allowed_vbios_versions: Vec<String>,
    /// Golden measurements of driver and VBIOS releases (what `cocoon
    /// measure-gpu` prints from NVIDIA's RIMs); each GPU must match a driver
    /// set and a VBIOS set for its chip and versions.
    #[serde(default)]
    pub reference_values: Vec<GpuReferenceValues>,
    /// Files of such sets, relative to the policy file; read into
    /// `reference_values` when the policy is loaded.
    #[serde(default, skip_serializing)]
    pub reference_value_files: Vec<PathBuf>,
    /// Accept genuine GPUs without comparing their measurements (no
    /// reference values). For inspection only.
    #[serde(default)]
    pub allow_any_measurement: bool,
    /// What certificates no cached CRL or OCSP response answers for mean:
    /// `require` (refused), `if-present` (checked where collateral exists),
    /// `skip`. A certificate shown revoked is refused unless `skip`.
    #[serde(default)]
    pub revocation: RevocationPolicy,
}

fn hardware_platforms() -> Vec<Platform> {
    vec![Platform::Tdx, Platform::SevSnp]
}

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".into()]
}

fn yes() -> bool {
    true
}

impl Default for TdxPolicy {
    fn default() -> Self {
        TdxPolicy { allowed_tcb_statuses: up_to_date(), refused_advisories: Vec::new(), min_tee_tcb_svn: None }
    }
}

impl Default for SnpPolicy {
    fn default() -> Self {
        SnpPolicy {
            min_reported_tcb: None,
            min_guest_svn: 0,
            allow_migration_agent: false,
            allow_smt: true,
            max_vmpl: 0,
        }
    }
}

impl Default for GpuPolicy {
    fn default() -> Self {
        GpuPolicy {
            required: false,
            require_cc_mode: true,
            allowed_architectures: Vec::new(),
            allowed_chips: Vec::new(),
            min_driver_version: None,
            allowed_vbios_versions: Vec::new(),
            reference_values: Vec::new(),
            reference_value_files: Vec::new(),
            allow_any_measurement: false,
            revocation: RevocationPolicy::default(),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_platforms: hardware_platforms(),
            development: false,
            allow_simulated: false,
            reference_values: Vec::new(),
            reference_value_files: Vec::new(),
            allow_any_measurement: false,
            required_model_digest: None,
            allowed_config_digests: Vec::new(),
            max_evidence_age_secs: Some(24 * 3600),
            require_nonce: false,
            tdx: TdxPolicy::default(),
            sev_snp: SnpPolicy::default(),
            gpu: GpuPolicy::default(),
        }
    }
}

impl Policy {
    /// The explicit development policy behind `--insecure-simulated`: simulated
    /// evidence and debug guests are accepted.
    pub fn insecure_simulated() -> Self {
        Policy { development: true, allow_simulated: true, ..Policy::default() }
    }

    /// Reads a policy from TOML (`.toml`) or JSON (anything else), with the
    /// reference-value files it names.
    pub fn from_file(path: &Path) -> Result<Self, AttestationError> {
        let err = |reason: String| AttestationError::PolicyFile { path: path.display().to_string(), reason };
        let bytes = crate::read_limited(path, 1 << 20).map_err(err)?;
        let text = String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8: {e}")))?;
        let mut policy: Policy = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for file in std::mem::take(&mut policy.reference_value_files) {
            policy.reference_values.push(ReferenceValues::from_file(&base.join(file))?);
        }
        for file in std::mem::take(&mut policy.gpu.reference_value_files) {
            policy.gpu.reference_values.extend(GpuReferenceValues::from_file(&base.join(file))?);
        }
        policy.check().map_err(err)?;
        Ok(policy)
    }

    /// Consistency of the fields with each other; called by `from_file`.
    pub fn check(&mut self) -> Result<(), String> {
        for (i, r) in std::mem::take(&mut self.reference_values).into_iter().enumerate() {
            self.reference_values.push(r.normalise().map_err(|e| format!("reference_values[{i}]: {e}"))?);
        }
        for (i, r) in std::mem::take(&mut self.gpu.reference_values).into_iter().enumerate() {
            self.gpu.reference_values.push(r.normalise().map_err(|e| format!("gpu.reference_values[{i}]: {e}"))?);
        }
        if self.allowed_platforms.contains(&Platform::Simulated) {
            return Err("allowed_platforms: simulated is not a hardware platform; use allow_simulated = true".into());
        }
        if let Some(svn) = &self.tdx.min_tee_tcb_svn
            && svn.len() != 16
        {
            return Err(format!("tdx.min_tee_tcb_svn: expected 16 numbers, found {}", svn.len()));
        }
        for d in self.required_model_digest.iter().chain(&self.allowed_config_digests) {
            if d.len() != 64 || hex::decode(d).is_err() {
                return Err(format!("digest {d:?}: expected 64 hex digits (SHA-256)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_refuse_simulated_and_files_parse() {
        let p = Policy::default();
        assert!(!p.allow_simulated && !p.development);
        assert!(!p.allowed_platforms.contains(&Platform::Simulated));
        assert_eq!(p.tdx.allowed_tcb_statuses, ["UpToDate"]);
        let dir = std::env::temp_dir().join(format!("cocoon-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("p.toml");
        std::fs::write(
            &t,
            "allow_simulated = true\nallowed_platforms = [\"tdx\"]\nreference_value_files = [\"ref.json\"]\n\
             [sev_snp]\nmin_reported_tcb = { bootloader = 4, tee = 0, snp = 24, microcode = 213 }\n",
        )
        .unwrap();
        std::fs::write(dir.join("ref.json"), format!(r#"{{"tdx":{{"mrtd":"{}"}}}}"#, "AA".repeat(48))).unwrap();
        let p = Policy::from_file(&t).unwrap();
        assert!(p.allow_simulated);
        assert_eq!(p.allowed_platforms, vec![Platform::Tdx]);
        assert_eq!(p.reference_values.len(), 1);
        assert_eq!(p.sev_snp.min_reported_tcb.unwrap().snp, 24);
        let j = dir.join("p.json");
        std::fs::write(&j, "{\"alow_simulated\": true}").unwrap();
        let e = Policy::from_file(&j).unwrap_err().to_string();
        assert!(e.contains("unknown field `alow_simulated`"), "{e}");
        std::fs::write(&j, "{\"allowed_platforms\": [\"simulated\"]}").unwrap();
        let e = Policy::from_file(&j).unwrap_err().to_string();
        assert!(e.contains("use allow_simulated = true"), "{e}");
        std::fs::write(&j, "{\"reference_value_files\": [\"missing.json\"]}").unwrap();
        let e = Policy::from_file(&j).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
        // GPU reference values: a file of one set or of several, as `cocoon measure-gpu` prints them.
        let set = |version: &str, v: &str| {
            format!(
                r#"{{"component":"driver","version":"{version}","product":"GH100","measurements":{{"7":["{}"]}}}}"#,
                v.repeat(48)
            )
        };
        std::fs::write(dir.join("one.json"), set("545.00", "AB")).unwrap();
        std::fs::write(dir.join("many.json"), format!("[{},{}]", set("550.90.07", "cd"), set("570.124.03", "ef")))
            .unwrap();
        std::fs::write(&t, "[gpu]\nrequired = true\nreference_value_files = [\"one.json\", \"many.json\"]\n").unwrap();
        let p = Policy::from_file(&t).unwrap();
        let versions: Vec<&str> = p.gpu.reference_values.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["545.00", "550.90.07", "570.124.03"]);
        assert_eq!(p.gpu.reference_values[0].measurements[&7], ["ab".repeat(48)]);
        std::fs::write(dir.join("one.json"), set("545.00", "A")).unwrap();
        let e = Policy::from_file(&t).unwrap_err().to_string();
        assert!(e.contains("one.json") && e.contains("measurement 7: expected 96 hex digits"), "{e}");
    }
}
