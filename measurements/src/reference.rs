//! Reference values from an image directory and a static config: the JSON
//! that verifiers pass to `cocoon attest --reference-values` (format
//! `cocoon-reference-values/1`, read by `cocoon_attestation::reference`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::MeasureError;
use crate::snp::{self, SnpLaunch};
use crate::tdvf::{self, PageOrder};

/// The VM the worker is launched as.
#[derive(Debug, Clone)]
pub struct VmShape {
    pub vcpus: u32,
    /// SNP: QEMU's `-cpu` model (`EPYC-Milan`, `EPYC-Genoa`, `EPYC-Turin`).
    pub vcpu_type: String,
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
    /// What TDVF measures first into RTMR0 (for checking an event log).
    pub cfv_sha384: String,
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
    MeasureError::Firmware(format!("{}: {e}", path.display()))
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
    let mut artifacts = vec![
        artifact(&kernel)?,
        artifact(&initrd)?,
        artifact_of(&base_path, base.as_bytes()),
        artifact_of(config, &config_bytes),
    ];

    let tdx_fw = image.file("OVMF.inteltdx.fd");
    let tdx = if tdx_fw.exists() {
        let fw = std::fs::read(&tdx_fw).map_err(|e| io(&tdx_fw, e))?;
        artifacts.push(artifact_of(&tdx_fw, &fw));
        Some(TdxValues {
            mrtd: vec![
                hex::encode(tdvf::mrtd(&fw, PageOrder::OnePass)?),
                hex::encode(tdvf::mrtd(&fw, PageOrder::TwoPass)?),
            ],
            cfv_sha384: hex::encode(tdvf::cfv_digest(&fw)?),
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
            "{} has neither OVMF.inteltdx.fd nor OVMF.amdsev.fd",
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
