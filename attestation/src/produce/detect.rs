//! Which TEE this guest runs in, and the producer that speaks to it:
//! configfs-tsm first (both platforms), then the platform's device.
//! There is no fallback to simulated evidence here: that takes an explicit,
//! separate choice by the operator.

use std::path::PathBuf;
use std::sync::Arc;

use cocoon_protocol::Platform;

use crate::configfs_tsm::{self, TsmProducer};
use crate::sev_guest::{self, SevGuestProducer};
use crate::tdx_guest::{self, QgsAddr, TdxGuestProducer};
use crate::{AttestationError, EvidenceProducer};

/// Where each kernel interface lives; tests point them at a temporary tree.
#[derive(Debug, Clone)]
pub struct TeePaths {
    pub tsm_root: PathBuf,
    pub tdx_device: PathBuf,
    pub sev_device: PathBuf,
    pub qgs: QgsAddr,
    /// Name of this process's configfs-tsm report entry.
    pub tsm_entry: String,
    /// SEV-SNP: the VMPL reports are requested for.
    pub vmpl: u32,
}

impl Default for TeePaths {
    fn default() -> Self {
        TeePaths {
            tsm_root: configfs_tsm::DEFAULT_ROOT.into(),
            tdx_device: tdx_guest::DEFAULT_DEVICE.into(),
            sev_device: sev_guest::DEVICE.into(),
            qgs: tdx_guest::DEFAULT_QGS,
            tsm_entry: format!("cocoon-{}", std::process::id()),
            vmpl: 0,
        }
    }
}

/// Opens the hardware producer for `want` (`None`: whichever TEE is present).
pub fn hardware_producer(
    want: Option<Platform>,
    paths: &TeePaths,
) -> Result<Arc<dyn EvidenceProducer>, AttestationError> {
    if want == Some(Platform::Simulated) {
        return Err(AttestationError::Producer("simulated evidence is not a hardware producer".into()));
    }
    let mut tried = Vec::new();
    if paths.tsm_root.is_dir() {
        match TsmProducer::open(&paths.tsm_root, &paths.tsm_entry) {
            Ok(p) if want.is_none_or(|w| w == p.platform()) => {
                let p = if p.platform() == Platform::SevSnp { p.with_privlevel(paths.vmpl) } else { p };
                return Ok(Arc::new(p));
            }
            Ok(p) => tried.push(format!("configfs-tsm serves {}, not {}", p.platform(), want.expect("checked"))),
            Err(e) => tried.push(e.to_string()),
        }
    } else {
        tried.push(format!("no configfs-tsm at {}", paths.tsm_root.display()));
    }
    if want.is_none_or(|w| w == Platform::Tdx) {
        match TdxGuestProducer::open(&paths.tdx_device, paths.qgs.clone()) {
            Ok(p) => return Ok(Arc::new(p)),
            Err(e) => tried.push(e.to_string()),
        }
    }
    if want.is_none_or(|w| w == Platform::SevSnp) {
        match SevGuestProducer::open(&paths.sev_device, paths.vmpl) {
            Ok(p) => return Ok(Arc::new(p)),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(AttestationError::Producer(format!(
        "no {} found ({})",
        want.map(|w| format!("{w} TEE")).unwrap_or_else(|| "TEE".into()),
        tried.join("; ")
    )))
}
