//! GPU evidence from NVIDIA's management library (NVML), loaded at run time
//! so that the enclave builds and runs on machines without NVIDIA's driver.
//! A narrow binding of our own: the maintained Rust NVML bindings do not
//! expose the confidential-computing calls. The structures follow `nvml.h`
//! (R550 and later); `tests/nvml_mock.c` implements the same calls in C from
//! those declarations, and the tests load it in place of the real library.
//!
//! Per GPU, for a nonce: the SPDM attestation report
//! (`nvmlDeviceGetConfComputeGpuAttestationReport`) and the attestation-key
//! certificate chain (`nvmlDeviceGetConfComputeGpuCertificate`, PEM), with
//! the driver and VBIOS versions and the architecture for the record. The
//! system must be in CC mode with developer tools off.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;

use cocoon_protocol::GpuEvidence;
use serde_bytes::ByteBuf;

use crate::AttestationError;

/// The library's name as NVIDIA's driver installs it.
pub const LIBRARY: &str = "libnvidia-ml.so.1";
/// Most GPUs a VM may pass through.
const MAX_GPUS: u32 = 64;

const NVML_SUCCESS: c_int = 0;
const CERT_CHAIN_SIZE: usize = 0x1000;
const ATTESTATION_CERT_CHAIN_SIZE: usize = 0x1400;
const NONCE_SIZE: usize = 0x20;
const ATTESTATION_REPORT_SIZE: usize = 0x2000;
const CEC_ATTESTATION_REPORT_SIZE: usize = 0x1000;
const CC_FEATURE_ENABLED: c_uint = 1;
const DEVTOOLS_MODE_ON: c_uint = 1;
const ACCEPTING_CLIENT_REQUESTS_TRUE: c_uint = 1;

#[repr(C)]
struct ConfComputeSystemState {
    environment: c_uint,
    cc_feature: c_uint,
    dev_tools_mode: c_uint,
}

#[repr(C)]
struct ConfComputeGpuCertificate {
    cert_chain_size: c_uint,
    attestation_cert_chain_size: c_uint,
    cert_chain: [u8; CERT_CHAIN_SIZE],
    attestation_cert_chain: [u8; ATTESTATION_CERT_CHAIN_SIZE],
}

#[repr(C)]
struct ConfComputeGpuAttestationReport {
    is_cec_attestation_report_present: c_uint,
    attestation_report_size: c_uint,
    cec_attestation_report_size: c_uint,
    nonce: [u8; NONCE_SIZE],
    attestation_report: [u8; ATTESTATION_REPORT_SIZE],
    cec_attestation_report: [u8; CEC_ATTESTATION_REPORT_SIZE],
}

type Device = *mut c_void;

/// The functions used, resolved once.
struct Api {
    init: unsafe extern "C" fn() -> c_int,
    shutdown: unsafe extern "C" fn() -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    device_count: unsafe extern "C" fn(*mut c_uint) -> c_int,
    device_by_index: unsafe extern "C" fn(c_uint, *mut Device) -> c_int,
    cc_state: unsafe extern "C" fn(*mut ConfComputeSystemState) -> c_int,
    set_ready: unsafe extern "C" fn(c_uint) -> c_int,
    report: unsafe extern "C" fn(Device, *mut ConfComputeGpuAttestationReport) -> c_int,
    certificate: unsafe extern "C" fn(Device, *mut ConfComputeGpuCertificate) -> c_int,
    driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> c_int,
    vbios_version: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int,
    architecture: unsafe extern "C" fn(Device, *mut c_uint) -> c_int,
}

/// NVML, initialised, in CC mode.
pub struct Nvml {
    api: Api,
    // Kept last so the function pointers above never outlive it.
    _library: libloading::Library,
}

fn fail(what: &str, reason: impl std::fmt::Display) -> AttestationError {
    AttestationError::Producer(format!("NVIDIA GPU evidence: {what}: {reason}"))
}

impl Nvml {
    /// Loads and initialises NVML from `path` (default: the driver's
    /// library). `Ok(None)` when there is no such library: no NVIDIA driver.
    pub fn open(path: Option<&Path>) -> Result<Option<Self>, AttestationError> {
        let name = path.map(|p| p.as_os_str().to_owned()).unwrap_or_else(|| LIBRARY.into());
        // SAFETY: loading NVIDIA's library runs its initialisers; it is the
        // driver's own user-space library, meant to be loaded this way.
        let library = match unsafe { libloading::Library::new(&name) } {
            Ok(l) => l,
            Err(e) => {
                tracing::info!("no NVIDIA management library ({}): {e}", name.to_string_lossy());
                return Ok(None);
            }
        };
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the type is the one nvml.h declares for this symbol.
                *unsafe { library.get($name) }
                    .map_err(|e| fail("resolving NVML", format!("{}: {e}", String::from_utf8_lossy($name))))?
            };
        }
        let api = Api {
            init: symbol!(b"nvmlInit_v2"),
            shutdown: symbol!(b"nvmlShutdown"),
            error_string: symbol!(b"nvmlErrorString"),
            device_count: symbol!(b"nvmlDeviceGetCount_v2"),
            device_by_index: symbol!(b"nvmlDeviceGetHandleByIndex_v2"),
            cc_state: symbol!(b"nvmlSystemGetConfComputeState"),
            set_ready: symbol!(b"nvmlSystemSetConfComputeGpusReadyState"),
            report: symbol!(b"nvmlDeviceGetConfComputeGpuAttestationReport"),
            certificate: symbol!(b"nvmlDeviceGetConfComputeGpuCertificate"),
            driver_version: symbol!(b"nvmlSystemGetDriverVersion"),
            vbios_version: symbol!(b"nvmlDeviceGetVbiosVersion"),
            architecture: symbol!(b"nvmlDeviceGetArchitecture"),
        };
        let nvml = Nvml { api, _library: library };
        // SAFETY: no arguments; NVML counts its initialisations.
        nvml.check("initialising NVML", unsafe { (nvml.api.init)() })?;
        Ok(Some(nvml))
    }

    fn check(&self, what: &str, ret: c_int) -> Result<(), AttestationError> {
        if ret == NVML_SUCCESS {
            return Ok(());
        }
        // SAFETY: nvmlErrorString returns a static NUL-terminated string (or null).
        let text = unsafe { (self.api.error_string)(ret) };
        let reason = if text.is_null() {
            format!("NVML error {ret}")
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            format!("{} (NVML error {ret})", unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy())
        };
        Err(fail(what, reason))
    }

    /// GPUs NVML sees.
    pub fn gpu_count(&self) -> Result<u32, AttestationError> {
        let mut n: c_uint = 0;
        // SAFETY: writes one unsigned int.
        self.check("counting GPUs", unsafe { (self.api.device_count)(&mut n) })?;
        if n > MAX_GPUS {
            return Err(fail("counting GPUs", format!("NVML reports {n}; at most {MAX_GPUS} are expected")));
        }
        Ok(n)
    }

    /// The system's confidential-computing mode: `on`, `off` or `devtools`
    /// (CC with developer tools, which can read GPU memory: not confidential).
    pub fn cc_mode(&self) -> Result<&'static str, AttestationError> {
        let mut s = ConfComputeSystemState { environment: 0, cc_feature: 0, dev_tools_mode: 0 };
        // SAFETY: writes the three-field structure nvml.h declares.
        self.check("reading the CC mode", unsafe { (self.api.cc_state)(&mut s) })?;
        Ok(match (s.cc_feature, s.dev_tools_mode) {
            (CC_FEATURE_ENABLED, DEVTOOLS_MODE_ON) => "devtools",
            (CC_FEATURE_ENABLED, _) => "on",
            _ => "off",
        })
    }

    /// Lets the GPUs accept work: NVIDIA's flow keeps them closed until the
    /// VM has attested them.
    pub fn set_ready(&self) -> Result<(), AttestationError> {
        // SAFETY: takes one unsigned int.
        self.check("declaring the GPUs ready", unsafe { (self.api.set_ready)(ACCEPTING_CLIENT_REQUESTS_TRUE) })
    }

    fn device(&self, index: u32) -> Result<Device, AttestationError> {
        let mut d: Device = std::ptr::null_mut();
        // SAFETY: writes one handle.
        self.check(&format!("GPU {index}"), unsafe { (self.api.device_by_index)(index, &mut d) })?;
        Ok(d)
    }

    fn text(&self, what: &str, call: impl FnOnce(*mut c_char, c_uint) -> c_int) -> Result<String, AttestationError> {
        let mut buf = [0 as c_char; 96];
        self.check(what, call(buf.as_mut_ptr(), buf.len() as c_uint))?;
        buf[buf.len() - 1] = 0;
        // SAFETY: NUL-terminated within the buffer (forced above).
        Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().trim().to_string())
    }

    /// Evidence from every GPU, each report requested with
    /// `nonce_for(cc_mode)` of the CC mode read first.
    pub fn evidence(&self, nonce_for: &dyn Fn(&str) -> [u8; 32]) -> Result<Vec<GpuEvidence>, AttestationError> {
        let cc_mode = self.cc_mode()?;
        let nonce = &nonce_for(cc_mode);
        let driver = self.text("driver version", |b, n| {
            // SAFETY: NVML writes at most `n` bytes to `b`, the buffer and length `text` passes.
            unsafe { (self.api.driver_version)(b, n) }
        })?;
        let mut out = Vec::new();
        for i in 0..self.gpu_count()? {
            let device = self.device(i)?;
            let mut report: Box<ConfComputeGpuAttestationReport> = Box::new(ConfComputeGpuAttestationReport {
                is_cec_attestation_report_present: 0,
                attestation_report_size: 0,
                cec_attestation_report_size: 0,
                nonce: *nonce,
                attestation_report: [0; ATTESTATION_REPORT_SIZE],
                cec_attestation_report: [0; CEC_ATTESTATION_REPORT_SIZE],
            });
            // SAFETY: `report` is the structure nvml.h declares, with the nonce set as input.
            self.check(&format!("GPU {i} attestation report"), unsafe { (self.api.report)(device, &mut *report) })?;
            let size = report.attestation_report_size as usize;
            if size == 0 || size > ATTESTATION_REPORT_SIZE {
                return Err(fail(&format!("GPU {i} attestation report"), format!("size {size} out of range")));
            }
            let mut certificate: Box<ConfComputeGpuCertificate> = Box::new(ConfComputeGpuCertificate {
                cert_chain_size: 0,
                attestation_cert_chain_size: 0,
                cert_chain: [0; CERT_CHAIN_SIZE],
                attestation_cert_chain: [0; ATTESTATION_CERT_CHAIN_SIZE],
            });
            // SAFETY: `certificate` is the structure nvml.h declares.
            self.check(&format!("GPU {i} certificates"), unsafe { (self.api.certificate)(device, &mut *certificate) })?;
            let chain_size = certificate.attestation_cert_chain_size as usize;
            if chain_size == 0 || chain_size > ATTESTATION_CERT_CHAIN_SIZE {
                return Err(fail(&format!("GPU {i} certificates"), format!("chain size {chain_size} out of range")));
            }
            let chain = crate::nvidia::chain_from_pem(&certificate.attestation_cert_chain[..chain_size])
                .map_err(|e| fail(&format!("GPU {i} certificates"), e))?;
            let vbios = self.text(&format!("GPU {i} VBIOS version"), |b, n| {
                // SAFETY: NVML writes at most `n` bytes to `b`, the buffer and length `text` passes.
                unsafe { (self.api.vbios_version)(device, b, n) }
            })?;
            let mut arch: c_uint = 0;
            // SAFETY: writes one unsigned int.
            self.check(&format!("GPU {i} architecture"), unsafe { (self.api.architecture)(device, &mut arch) })?;
            out.push(GpuEvidence {
                vendor: "nvidia".into(),
                architecture: match arch {
                    9 => "HOPPER".into(),
                    10 => "BLACKWELL".into(),
                    other => format!("NVML architecture {other}"),
                },
                cc_mode: cc_mode.into(),
                driver_version: driver.clone(),
                vbios_version: vbios,
                nonce: ByteBuf::from(nonce.to_vec()),
                attestation_report: ByteBuf::from(report.attestation_report[..size].to_vec()),
                certificate_chain: chain.into_iter().map(ByteBuf::from).collect(),
            });
        }
        Ok(out)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: balances the initialisation in `open`.
        unsafe { (self.api.shutdown)() };
    }
}

/// Takes each GPU's evidence for `nonce` and verifies it here before anyone
/// relies on it: the enclave starts, and declares the GPUs ready, only with
/// GPUs that attest.
pub fn attest_locally(
    nvml: &Nvml,
    nonce: &[u8; 32],
    now: u64,
) -> Result<Vec<crate::nvidia::VerifiedGpu>, AttestationError> {
    let evidence = nvml.evidence(&|_| *nonce)?;
    if evidence.is_empty() {
        return Err(fail("attesting the GPUs", "NVML sees no GPU"));
    }
    evidence
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.cc_mode != "on" {
                return Err(fail(
                    "attesting the GPUs",
                    format!(
                        "CC mode is {:?}; confidential computing needs \"on\" (nvidia-smi conf-compute)",
                        e.cc_mode
                    ),
                ));
            }
            let chain: Vec<Vec<u8>> = e.certificate_chain.iter().map(|c| c.to_vec()).collect();
            crate::nvidia::verify_gpu_report(&e.attestation_report, &chain, nonce, now)
                .map_err(|err| fail(&format!("GPU {i} does not attest"), err))
        })
        .collect()
}

impl crate::GpuEvidenceSource for Nvml {
    fn gpu_evidence(
        &self,
        nonce_for: &dyn Fn(&str) -> [u8; 32],
    ) -> Result<Vec<cocoon_protocol::GpuEvidence>, crate::AttestationError> {
        self.evidence(nonce_for)
    }
}
