//! Reference values from an image directory and a static config: the JSON
//! that verifiers pass to `cocoon attest --reference-values` (format
//! `cocoon-reference-values/1`, read by `cocoon_attestation::reference`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::MeasureError;
use crate::snp::{self, SnpLaunch};
use crate::tdvf::{self, PageOrder};
use crate::tdx_boot::BootEvents;

/// The VM the worker is launched as.
#[derive(Debug, Clone)]
pub struct VmShape {
    pub vcpus: u32,
    /// SNP: QEMU's `-cpu` model (`EPYC-Milan`, `EPYC-Genoa`, `EPYC-Turin`).
    pub vcpu_type: String,
    /// Guest RAM (QEMU `-m`): TDX's RTMR1 depends on where QEMU puts the initrd.
    pub memory_bytes: u64,
    /// TDX RTMR0 values taken from reference boots on the pinned host stack
    /// (QEMU version, machine, memory, GPUs): RTMR0 measures the host's ACPI
    /// tables, which cannot be derived from the image alone.
    pub tdx_rtmr0: Vec<[u8; 48]>,
}

/// A 48-byte measurement register value in hex (`--tdx-rtmr0`).
pub fn parse_register(s: &str) -> Result<[u8; 48], String> {
    let bytes = hex::decode(s.trim()).map_err(|e| format!("expected 96 hex digits: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("expected 48 bytes (96 hex digits), found {}", b.len()))
}

/// A memory size as QEMU's `-m` takes it: MiB without a suffix, else a
/// binary K/M/G/T suffix (`4G`, `8192`, `8192M`).
pub fn parse_memory_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        Some('T') => (&s[..s.len() - 1], 40),
        _ => (s, 20),
    };
    let n: u64 = digits.parse().map_err(|_| format!("expected a size like 4G or 8192 (MiB), found {s:?}"))?;
    n.checked_mul(1 << shift)
        .filter(|b| (1 << 30..=1 << 52).contains(b))
        .ok_or_else(|| format!("{s:?}: guest memory must be between 1G and 4096T"))
}

/// Where the image's files are (`guest-image/out/` by default names).
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[derive(Debug, Serialize)]
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TdxValues {
    /// Both page orders: QEMU >= 9 (one pass) and QEMU 8.x TDX builds (two pass).
    pub mrtd: Vec<String>,
    /// Only when given (`--tdx-rtmr0`): values from reference boots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rtmr0: Vec<String>,
    /// Kernel and boot events (direct kernel boot, see `tdx_boot`).
    pub rtmr1: String,
    /// Command line and initrd as the Linux EFI stub measures them.
    pub rtmr2: String,
    /// Guest RAM RTMR1 was computed for.
    pub memory_bytes: u64,
    /// The single events, for checking a TD's event log entry by entry.
    pub events: TdxEvents,
}

/// Digests of individual measured events (SHA-384, hex).
#[derive(Debug, Serialize)]
pub struct TdxEvents {
    /// RTMR0's configuration firmware volume event: fixed by the firmware.
    pub cfv: String,
    /// RTMR1's EV_EFI_BOOT_SERVICES_APPLICATION: the QEMU-patched kernel's Authenticode hash.
    pub kernel_authenticode: String,
    /// RTMR2's "LOADED_IMAGE::LoadOptions" event.
    pub cmdline: String,
    /// RTMR2's "Linux initrd" event.
    pub initrd: String,
}

#[derive(Debug, Serialize)]
pub struct SnpValues {
    pub measurement: String,
    pub vcpus: u32,
    pub vcpu_type: String,
}

#[derive(Debug, Serialize)]
pub struct ReferenceValues {
    pub format: &'static str,
    pub name: String,
    pub config_digest: String,
    /// The full kernel command line the digests were computed with.
    pub cmdline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxValues>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sev_snp: Option<SnpValues>,
    pub artifacts: Vec<Artifact>,
}

fn io(path: &Path, e: std::io::Error) -> MeasureError {
    MeasureError::Read { path: path.display().to_string(), reason: e.to_string() }
}

fn artifact_of(path: &Path, bytes: &[u8]) -> Artifact {
    Artifact {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    }
}

fn artifact(path: &Path) -> Result<Artifact, MeasureError> {
    Ok(artifact_of(path, &std::fs::read(path).map_err(|e| io(path, e))?))
}

/// The command line the image boots with for `config`: the image's base
/// command line plus `cocoon.config=sha256:<digest>`.
pub fn cmdline(base: &str, config_digest: &[u8; 32]) -> String {
    let base = base.trim();
    let tail = format!("cocoon.config=sha256:{}", hex::encode(config_digest));
    if base.is_empty() { tail } else { format!("{base} {tail}") }
}

/// Computes every reference value the image and config determine.
pub fn measure(image: &Image, config: &Path, shape: &VmShape) -> Result<ReferenceValues, MeasureError> {
    let config_bytes = std::fs::read(config).map_err(|e| io(config, e))?;
    let config_digest: [u8; 32] = Sha256::digest(&config_bytes).into();
    let base_path = image.file("cmdline");
    let base = std::fs::read_to_string(&base_path).map_err(|e| io(&base_path, e))?;
    let cmdline = cmdline(&base, &config_digest);
    let kernel = image.file("vmlinuz");
    let initrd = image.file("initrd.img");
    let kernel_bytes = std::fs::read(&kernel).map_err(|e| io(&kernel, e))?;
    let initrd_bytes = std::fs::read(&initrd).map_err(|e| io(&initrd, e))?;
    let mut artifacts = vec![
        artifact_of(&kernel, &kernel_bytes),
        artifact_of(&initrd, &initrd_bytes),
        artifact_of(&base_path, base.as_bytes()),
        artifact_of(config, &config_bytes),
    ];

    let tdx_fw = image.file("OVMF.inteltdx.fd");
    let tdx = if tdx_fw.exists() {
        let fw = std::fs::read(&tdx_fw).map_err(|e| io(&tdx_fw, e))?;
        artifacts.push(artifact_of(&tdx_fw, &fw));
        let boot = BootEvents::measure(&kernel_bytes, &initrd_bytes, &cmdline, shape.memory_bytes)?;
        Some(TdxValues {
            mrtd: vec![
                hex::encode(tdvf::mrtd(&fw, PageOrder::OnePass)?),
                hex::encode(tdvf::mrtd(&fw, PageOrder::TwoPass)?),
            ],
            rtmr0: shape.tdx_rtmr0.iter().map(hex::encode).collect(),
            rtmr1: hex::encode(boot.rtmr1()),
            rtmr2: hex::encode(boot.rtmr2()),
            memory_bytes: shape.memory_bytes,
            events: TdxEvents {
                cfv: hex::encode(tdvf::cfv_digest(&fw)?),
                kernel_authenticode: hex::encode(boot.kernel_authenticode),
                cmdline: hex::encode(boot.cmdline),
                initrd: hex::encode(boot.initrd),
            },
        })
    } else {
        None
    };
    let snp_fw = image.file("OVMF.amdsev.fd");
    let sev_snp = if snp_fw.exists() {
        artifacts.push(artifact(&snp_fw)?);
        let ld = snp::launch_digest(&SnpLaunch {
            ovmf: &snp_fw,
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline: &cmdline,
            vcpus: shape.vcpus,
            vcpu_type: &shape.vcpu_type,
        })?;
        Some(SnpValues { measurement: hex::encode(ld), vcpus: shape.vcpus, vcpu_type: shape.vcpu_type.clone() })
    } else {
        None
    };
    if tdx.is_none() && sev_snp.is_none() {
        return Err(MeasureError::Firmware(format!(
            "{} has neither OVMF.inteltdx.fd nor OVMF.amdsev.fd (expected a guest image: make image)",
            image.dir.display()
        )));
    }
    Ok(ReferenceValues {
        format: "cocoon-reference-values/1",
        name: format!("{} with {}, {} vCPUs", image.dir.display(), config.display(), shape.vcpus),
        config_digest: hex::encode(config_digest),
        cmdline,
        tdx,
        sev_snp,
        artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_memory_size;

    #[test]
    fn memory_sizes_read_like_qemu() {
        assert_eq!(parse_memory_size("4G"), Ok(4 << 30));
        assert_eq!(parse_memory_size("8192"), Ok(8 << 30));
        assert_eq!(parse_memory_size("2048m"), Ok(2 << 30));
        assert_eq!(parse_memory_size("1T"), Ok(1 << 40));
        assert!(parse_memory_size("4X").unwrap_err().contains("expected a size"));
        assert!(parse_memory_size("512M").unwrap_err().contains("between 1G"));
        assert!(parse_memory_size("99999999999T").is_err());
    }
}
