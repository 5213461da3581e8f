//! The SEV-SNP launch digest of a guest booted with QEMU's `kernel-hashes=on`:
//! the firmware pages, the SEV hashes table (kernel, initrd, command line), the
//! metadata pages and one VMSA per vCPU, through the `sev` crate's port of
//! `sev-snp-measure`.

use std::path::{Path, PathBuf};

use sev::measurement::snp::{SnpMeasurementArgs, calc_snp_ovmf_hash, snp_calc_launch_digest};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};

use crate::MeasureError;

/// What the launch digest depends on besides the image.
#[derive(Debug, Clone)]
pub struct SnpLaunch<'a> {
    pub ovmf: &'a Path,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub vcpus: u32,
    /// QEMU's `-cpu` model: `EPYC-Milan`, `EPYC-Genoa`, `EPYC-Turin`...
    pub vcpu_type: &'a str,
}

fn err(e: impl std::fmt::Display) -> MeasureError {
    MeasureError::Snp(e.to_string())
}

/// The launch digest (48 bytes) a genuine guest's report carries as `measurement`.
pub fn launch_digest(l: &SnpLaunch) -> Result<[u8; 48], MeasureError> {
    if l.vcpus == 0 || l.vcpus > 512 {
        return Err(err(format!("{} vCPUs; expected 1 to 512", l.vcpus)));
    }
    let vcpu_type = CpuType::try_from(l.vcpu_type).map_err(|e| err(format!("vCPU type {:?}: {e}", l.vcpu_type)))?;
    let ld = snp_calc_launch_digest(SnpMeasurementArgs {
        vcpus: l.vcpus,
        vcpu_type,
        ovmf_file: l.ovmf.to_path_buf(),
        guest_features: GuestFeatures::default(),
        kernel_file: Some(l.kernel.to_path_buf()),
        initrd_file: l.initrd.map(PathBuf::from),
        append: Some(l.cmdline),
        ovmf_hash_str: None,
        vmm_type: Some(VMMType::QEMU),
    })
    .map_err(err)?;
    let hex_ld = ld.get_hex_ld();
    let bytes = hex::decode(&hex_ld).map_err(err)?;
    bytes.try_into().map_err(|_| err("the launch digest is not 48 bytes"))
}

/// The firmware-only digest seed (`sev-snp-measure --mode snp:ovmf-hash`).
pub fn ovmf_hash(ovmf: &Path) -> Result<[u8; 48], MeasureError> {
    let ld = calc_snp_ovmf_hash(ovmf.to_path_buf()).map_err(err)?;
    hex::decode(ld.get_hex_ld()).map_err(err)?.try_into().map_err(|_| err("the digest is not 48 bytes"))
}
