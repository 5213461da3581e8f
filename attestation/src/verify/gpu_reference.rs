//! GPU reference values: the golden measurements of one driver or VBIOS
//! release, as `cocoon measure-gpu` prints them from NVIDIA's signed RIMs
//! (`rim`). A verified GPU report passes when, for its driver version and
//! for its VBIOS version, one set's every measurement matches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AttestationError;
use crate::nvidia::VerifiedGpu;

pub const FORMAT: &str = "cocoon-gpu-reference-values/1";
/// The RIM index NVIDIA skips when the report says NVDEC0 is disabled.
const NVDEC0_INDEX: u8 = 35;
const NVDEC0_DISABLED: u8 = 0x55;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuComponent {
    Driver,
    Vbios,
}

impl std::fmt::Display for GpuComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuComponent::Driver => "driver",
            GpuComponent::Vbios => "VBIOS",
        })
    }
}

/// Where a set came from (informative; not part of the decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RimSource {
    pub tag_id: String,
    /// SHA-256 of the RIM file.
    pub sha256: String,
    /// The RIM signer's common name and the end of its validity.
    pub signer: String,
    pub signer_not_after: String,
    /// The time the signature and chain were verified at.
    pub verified_at: String,
}

/// One driver or VBIOS release's golden measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReferenceValues {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub component: GpuComponent,
    /// Driver (`545.00`) or VBIOS (`96.00.5E.00.01`) version the set is for.
    pub version: String,
    /// The chip (`GH100`).
    pub product: String,
    /// RIM index (SPDM block index − 1) to the acceptable values, hex SHA-384.
    pub measurements: BTreeMap<u8, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RimSource>,
}

impl GpuReferenceValues {
    pub fn normalise(mut self) -> Result<Self, String> {
        if let Some(f) = &self.format
            && f != FORMAT
        {
            return Err(format!("format: expected {FORMAT:?}, found {f:?}"));
        }
        if self.measurements.is_empty() {
            return Err(format!(
                "{} {}: no measurements; this set would constrain nothing",
                self.component, self.version
            ));
        }
        for (index, values) in &mut self.measurements {
            if *index >= 64 {
                return Err(format!("measurement index {index}: expected 0 to 63"));
            }
            if values.is_empty() {
                return Err(format!("measurement {index}: an empty list allows nothing"));
            }
            for v in values.iter_mut() {
                *v = v.trim().to_ascii_lowercase();
                if v.len() != 96 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("measurement {index}: expected 96 hex digits, found {v:?}"));
                }
            }
        }
        Ok(self)
    }

    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {} ({n})", self.component, self.version),
            None => format!("{} {}", self.component, self.version),
        }
    }

    /// Reads a file of one set or a list of sets.
    pub fn from_file(path: &std::path::Path) -> Result<Vec<Self>, AttestationError> {
        let err = |reason: String| AttestationError::PolicyFile { path: path.display().to_string(), reason };
        let bytes = crate::read_limited(path, crate::reference::MAX_FILE).map_err(err)?;
        // One set, or a list of them (`cocoon measure-gpu` with several RIMs).
        let sets = match serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))? {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        sets.into_iter()
            .enumerate()
            .map(|(i, v)| {
                let set: Self = serde_json::from_value(v).map_err(|e| err(format!("set {}: {e}", i + 1)))?;
                set.normalise().map_err(|e| err(format!("set {}: {e}", i + 1)))
            })
            .collect()
    }

    /// The measurements of `gpu` that differ from this set, each named by
    /// RIM index and block; empty when all match.
    pub fn mismatches(&self, gpu: &VerifiedGpu) -> Vec<String> {
        let skip_nvdec0 = gpu.nvdec0_status == Some(NVDEC0_DISABLED);
        let mut out = Vec::new();
        for (index, allowed) in &self.measurements {
            if skip_nvdec0 && *index == NVDEC0_INDEX {
                continue;
            }
            let block = *index as u16 + 1;
            let found = gpu.measurements.iter().find(|(b, _)| *b as u16 == block).map(|(_, v)| v.as_str());
            match found {
                Some(v) if allowed.iter().any(|a| a == v) => {}
                found => {
                    let expected = if allowed.len() == 1 {
                        allowed[0].clone()
                    } else {
                        format!("one of [{}]", allowed.join(", "))
                    };
                    out.push(format!(
                        "index {index} (block {block}): expected {expected}, found {}",
                        found.unwrap_or("no such block")
                    ));
                }
            }
        }
        out
    }
}

/// Compares a verified GPU with the reference sets: for each of driver and
/// VBIOS, some set for the GPU's chip and version must match entirely.
/// Returns the sets that matched, or why none did.
pub fn compare(sets: &[GpuReferenceValues], gpu: &VerifiedGpu) -> Result<String, String> {
    let mut matched = Vec::new();
    let mut problems = Vec::new();
    for (component, version) in
        [(GpuComponent::Driver, gpu.driver_version.as_deref()), (GpuComponent::Vbios, gpu.vbios_version.as_deref())]
    {
        let Some(version) = version else {
            problems.push(format!("the report states no {component} version"));
            continue;
        };
        let candidates: Vec<&GpuReferenceValues> = sets
            .iter()
            .filter(|s| s.component == component && s.product.eq_ignore_ascii_case(&gpu.chip) && s.version == version)
            .collect();
        if candidates.is_empty() {
            let known: Vec<String> = sets
                .iter()
                .filter(|s| s.component == component && s.product.eq_ignore_ascii_case(&gpu.chip))
                .map(|s| s.version.clone())
                .collect();
            problems.push(format!(
                "no {component} reference values for {} {component} {version} (the policy has {})",
                gpu.chip,
                if known.is_empty() { "none for this chip".to_string() } else { known.join(", ") }
            ));
            continue;
        }
        let mut why = Vec::new();
        match candidates.iter().find_map(|s| {
            let m = s.mismatches(gpu);
            if m.is_empty() {
                Some(s.label())
            } else {
                why.push(format!("{}: {}", s.label(), m.join("; ")));
                None
            }
        }) {
            Some(label) => matched.push(label),
            None => problems.push(why.join(" | ")),
        }
    }
    if problems.is_empty() {
        Ok(format!("measurements match {}", matched.join(" and ")))
    } else {
        Err(problems.join("; "))
    }
}
