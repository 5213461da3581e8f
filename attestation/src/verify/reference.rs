//! Reference values: the launch measurements a genuine worker's hardware
//! evidence must show, as `make measure` prints them (JSON). Fields this
//! verifier does not know (artifact digests, the VM shape) are kept out of
//! the decision but allowed in the file.

use serde::{Deserialize, Deserializer, Serialize};

use crate::AttestationError;

pub const FORMAT: &str = "cocoon-reference-values/1";
/// Largest reference-values file accepted.
pub const MAX_FILE: u64 = 1 << 20;

/// One value or several acceptable ones (`"ab…"` or `["ab…", "cd…"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(transparent)]
pub struct Allowed(pub Vec<String>);

impl<'de> Deserialize<'de> for Allowed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(Allowed(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }))
    }
}

impl Allowed {
    fn normalise(&mut self, field: &str, bytes: usize) -> Result<(), String> {
        if self.0.is_empty() {
            return Err(format!("{field}: an empty list allows nothing; leave the field out to not constrain it"));
        }
        for v in &mut self.0 {
            *v = v.trim().to_ascii_lowercase();
            if v.len() != 2 * bytes || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{field}: expected {} hex digits, found {v:?}", 2 * bytes));
            }
        }
        Ok(())
    }

    pub fn allows(&self, value: &[u8]) -> bool {
        let v = hex::encode(value);
        self.0.contains(&v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TdxReference {
    pub mrtd: Option<Allowed>,
    pub rtmr0: Option<Allowed>,
    pub rtmr1: Option<Allowed>,
    pub rtmr2: Option<Allowed>,
    pub rtmr3: Option<Allowed>,
    pub mr_config_id: Option<Allowed>,
    pub mr_owner: Option<Allowed>,
    pub mr_owner_config: Option<Allowed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SnpReference {
    pub measurement: Option<Allowed>,
    pub host_data: Option<Allowed>,
    pub id_key_digest: Option<Allowed>,
}

/// One set of reference values (one image + config + VM shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReferenceValues {
    #[serde(default)]
    pub format: Option<String>,
    /// Free text naming the set in messages (image version, VM shape).
    #[serde(default)]
    pub name: Option<String>,
    /// SHA-256 of the static config the image was measured with.
    #[serde(default)]
    pub config_digest: Option<Allowed>,
    #[serde(default)]
    pub tdx: Option<TdxReference>,
    #[serde(default)]
    pub sev_snp: Option<SnpReference>,
}

impl ReferenceValues {
    /// Checks formats and lengths and lowercases every value.
    pub fn normalise(mut self) -> Result<Self, String> {
        if let Some(f) = &self.format
            && f != FORMAT
        {
            return Err(format!("format: expected {FORMAT:?}, found {f:?}"));
        }
        if let Some(c) = &mut self.config_digest {
            c.normalise("config_digest", 32)?;
        }
        if let Some(t) = &mut self.tdx {
            for (name, f) in [
                ("tdx.mrtd", &mut t.mrtd),
                ("tdx.rtmr0", &mut t.rtmr0),
                ("tdx.rtmr1", &mut t.rtmr1),
                ("tdx.rtmr2", &mut t.rtmr2),
                ("tdx.rtmr3", &mut t.rtmr3),
                ("tdx.mr_config_id", &mut t.mr_config_id),
                ("tdx.mr_owner", &mut t.mr_owner),
                ("tdx.mr_owner_config", &mut t.mr_owner_config),
            ] {
                if let Some(a) = f {
                    a.normalise(name, 48)?;
                }
            }
            if t.mrtd.is_none() {
                return Err("tdx.mrtd is required: without it any firmware would pass".into());
            }
        }
        if let Some(s) = &mut self.sev_snp {
            if let Some(a) = &mut s.measurement {
                a.normalise("sev_snp.measurement", 48)?;
            } else {
                return Err("sev_snp.measurement is required: without it any launch would pass".into());
            }
            if let Some(a) = &mut s.host_data {
                a.normalise("sev_snp.host_data", 32)?;
            }
            if let Some(a) = &mut s.id_key_digest {
                a.normalise("sev_snp.id_key_digest", 48)?;
            }
        }
        if self.tdx.is_none() && self.sev_snp.is_none() {
            return Err("neither a tdx nor a sev_snp section: this set constrains nothing".into());
        }
        Ok(self)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let v: ReferenceValues = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        v.normalise()
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, AttestationError> {
        let err = |reason: String| AttestationError::PolicyFile { path: path.display().to_string(), reason };
        let bytes = crate::read_limited(path, MAX_FILE).map_err(err)?;
        Self::from_json(&bytes).map_err(err)
    }

    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("set {} ({n})", index + 1),
            None => format!("set {}", index + 1),
        }
    }
}

/// Checks one field; `None` when it matches or is not constrained.
pub fn mismatch(field: &str, allowed: &Option<Allowed>, actual: &[u8]) -> Option<String> {
    let a = allowed.as_ref()?;
    if a.allows(actual) {
        return None;
    }
    let expected = if a.0.len() == 1 { a.0[0].clone() } else { format!("one of [{}]", a.0.join(", ")) };
    Some(format!("{field}: expected {expected}, found {}", hex::encode(actual)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_one_or_many_and_refuses_bad_values() {
        let r = ReferenceValues::from_json(
            format!(
                r#"{{"format":"{FORMAT}","tdx":{{"mrtd":["{a}","{b}"],"rtmr2":"{a}"}},"artifacts":{{"vmlinuz":"x"}}}}"#,
                a = "AB".repeat(48),
                b = "cd".repeat(48)
            )
            .as_bytes(),
        )
        .unwrap();
        let t = r.tdx.unwrap();
        assert!(t.mrtd.as_ref().unwrap().allows(&[0xab; 48]));
        assert!(t.mrtd.as_ref().unwrap().allows(&[0xcd; 48]));
        assert_eq!(mismatch("rtmr2", &t.rtmr2, &[0xab; 48]), None);
        assert_eq!(mismatch("rtmr1", &t.rtmr1, &[0x11; 48]), None);
        let m = mismatch("tdx.mrtd", &t.mrtd, &[0x11; 48]).unwrap();
        assert!(m.starts_with("tdx.mrtd: expected one of [abab"), "{m}");
        let e = ReferenceValues::from_json(br#"{"tdx":{"mrtd":"abcd"}}"#).unwrap_err();
        assert_eq!(e, "tdx.mrtd: expected 96 hex digits, found \"abcd\"");
        let e = ReferenceValues::from_json(br#"{"tdx":{"rtmr1":[]}}"#).unwrap_err();
        assert!(e.contains("tdx.rtmr1: an empty list allows nothing"), "{e}");
        let e = ReferenceValues::from_json(br#"{"tdx":{}}"#).unwrap_err();
        assert!(e.contains("tdx.mrtd is required"), "{e}");
        assert!(ReferenceValues::from_json(br#"{"format":"other/2","tdx":{}}"#).unwrap_err().contains("format"));
    }
}
