//! Hardware evidence through the Linux configfs-tsm ABI
//! (`/sys/kernel/config/tsm/report/<entry>/`), which serves both TDX quotes
//! (provider `tdx_guest`) and SEV-SNP reports (provider `sev_guest`).
//!
//! Writing `inblob` (or `privlevel`) bumps the entry's `generation`; reading
//! `outblob` makes the report. If another process writes to the same entry
//! between our write and our read, the generation shows it and we retry:
//! the evidence must be for our report data and nothing else.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cocoon_protocol::Platform;

use crate::sev_guest::parse_cert_table;
use crate::{AttestationError, EvidenceProducer, PlatformEvidence};

/// Where the kernel mounts the ABI.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// Largest `outblob` accepted (a TDX quote with its PCK chain is about 5 KB).
const MAX_OUTBLOB: u64 = 64 << 10;
/// Largest `auxblob` accepted (SNP certificate table).
const MAX_AUXBLOB: u64 = 64 << 10;
/// Tries before giving up on an entry that others keep writing to.
const MAX_ATTEMPTS: u32 = 8;

fn err(path: &Path, what: impl std::fmt::Display) -> AttestationError {
    AttestationError::Producer(format!("configfs-tsm {}: {what}", path.display()))
}

pub struct TsmProducer {
    entry: PathBuf,
    platform: Platform,
    /// SEV-SNP: the VMPL to request the report for (written to `privlevel`).
    privlevel: Option<u32>,
    created: bool,
    lock: Mutex<()>,
}

impl TsmProducer {
    /// Opens (or creates) the report entry `name` under `root` and reads its provider.
    pub fn open(root: &Path, name: &str) -> Result<Self, AttestationError> {
        let entry = root.join(name);
        let created = match std::fs::create_dir(&entry) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(err(&entry, format!("creating the report entry: {e}"))),
        };
        let provider = read_text(&entry.join("provider"))?;
        let platform = match provider.as_str() {
            "tdx_guest" => Platform::Tdx,
            "sev_guest" => Platform::SevSnp,
            other => return Err(err(&entry, format!("provider {other:?}, expected tdx_guest or sev_guest"))),
        };
        Ok(TsmProducer { entry, platform, privlevel: None, created, lock: Mutex::new(()) })
    }

    /// SEV-SNP only: ask for reports at this VMPL.
    pub fn with_privlevel(mut self, level: u32) -> Self {
        self.privlevel = Some(level);
        self
    }

    fn attempt(&self, report_data: &[u8; 64]) -> Result<Option<PlatformEvidence>, AttestationError> {
        let before = read_generation(&self.entry)?;
        let mut writes = 0;
        if let Some(level) = self.privlevel {
            write(&self.entry.join("privlevel"), level.to_string().as_bytes())?;
            writes += 1;
        }
        write(&self.entry.join("inblob"), report_data)?;
        writes += 1;
        let out = read_bounded(&self.entry.join("outblob"), MAX_OUTBLOB)?;
        let aux_path = self.entry.join("auxblob");
        let aux = if aux_path.exists() { Some(read_bounded(&aux_path, MAX_AUXBLOB)?) } else { None };
        let after = read_generation(&self.entry)?;
        if after != before + writes {
            tracing::warn!(
                entry = %self.entry.display(),
                before, after, writes,
                "configfs-tsm generation moved under us (another writer); retrying"
            );
            return Ok(None);
        }
        if out.is_empty() {
            return Err(err(&self.entry, "outblob is empty"));
        }
        let certificates = match aux {
            Some(table) if !table.is_empty() && self.platform == Platform::SevSnp => {
                Some(parse_cert_table(&table).map_err(|e| err(&aux_path, e))?)
            }
            _ => None,
        };
        Ok(Some(PlatformEvidence { quote_or_report: out, certificates, event_log: None }))
    }
}

impl EvidenceProducer for TsmProducer {
    fn platform(&self) -> Platform {
        self.platform
    }

    fn produce(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..MAX_ATTEMPTS {
            if let Some(ev) = self.attempt(report_data)? {
                return Ok(ev);
            }
        }
        Err(err(
            &self.entry,
            format!(
                "the generation changed during each of {MAX_ATTEMPTS} attempts: another process keeps writing to this entry"
            ),
        ))
    }
}

impl Drop for TsmProducer {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir(&self.entry);
        }
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, AttestationError> {
    crate::read_limited(path, limit).map_err(|e| err(path, e))
}

fn read_text(path: &Path) -> Result<String, AttestationError> {
    let b = read_bounded(path, 256)?;
    Ok(String::from_utf8_lossy(&b).trim().to_string())
}

fn read_generation(entry: &Path) -> Result<u64, AttestationError> {
    let path = entry.join("generation");
    let t = read_text(&path)?;
    t.parse().map_err(|_| err(&path, format!("expected a decimal number, found {t:?}")))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), AttestationError> {
    // No O_CREAT: configfs attributes exist as soon as the entry does.
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).map_err(|e| err(path, e))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| err(path, e))
}
