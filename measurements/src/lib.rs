//! Launch-measurement recomputation from image artifacts: what `make measure`
//! runs. Written from Intel's TDX module and TDVF specifications and QEMU's
//! and edk2's sources, and tested against values two independent tools agree on.

mod le;
pub mod ovmf;
pub mod reference;
pub mod snp;
pub mod tdvf;
pub mod tdx_boot;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeasureError {
    /// An input file (image artifact or config) could not be read.
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("firmware: {0}")]
    Firmware(String),
    #[error("SEV-SNP launch digest: {0}")]
    Snp(String),
    #[error("kernel: {0}")]
    Kernel(String),
}
