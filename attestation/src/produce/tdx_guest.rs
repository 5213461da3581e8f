//! TDX quotes where configfs-tsm is missing: the TD report from
//! `/dev/tdx_guest` (`TDX_CMD_GET_REPORT0`), turned into a quote by the host's
//! Quote Generation Service over vsock (Intel's QGS message protocol, as
//! `libtdx_attest` speaks it: a 4-byte big-endian length, then the message).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cocoon_protocol::Platform;

use crate::{AttestationError, EvidenceProducer, PlatformEvidence, tdx};

pub const DEFAULT_DEVICE: &str = "/dev/tdx_guest";
/// Where QEMU's `quote-generation-socket` usually is: the host (CID 2), port 4050.
pub const DEFAULT_QGS: QgsAddr = QgsAddr::Vsock { cid: 2, port: 4050 };

const TDREPORT_LEN: usize = 1024;
/// `_IOWR('T', 1, struct tdx_report_req)`, the struct being 64 + 1024 bytes.
const TDX_CMD_GET_REPORT0: u64 = (3 << 30) | (((64 + TDREPORT_LEN) as u64) << 16) | ((b'T' as u64) << 8) | 1;
const QGS_GET_QUOTE_REQ: u32 = 0;
const QGS_GET_QUOTE_RESP: u32 = 1;
const QGS_HEADER: usize = 16;
const QGS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QgsAddr {
    Vsock {
        cid: u32,
        port: u32,
    },
    /// A Unix socket (tests; a QGS on the same machine).
    Unix(PathBuf),
}

fn fail(what: impl std::fmt::Display) -> AttestationError {
    AttestationError::Producer(format!("tdx_guest: {what}"))
}

pub struct TdxGuestProducer {
    device: PathBuf,
    qgs: QgsAddr,
    lock: Mutex<()>,
}

impl TdxGuestProducer {
    pub fn open(device: &Path, qgs: QgsAddr) -> Result<Self, AttestationError> {
        if !device.exists() {
            return Err(fail(format!("{} does not exist: not a TDX guest", device.display())));
        }
        Ok(TdxGuestProducer { device: device.to_path_buf(), qgs, lock: Mutex::new(()) })
    }
}

impl EvidenceProducer for TdxGuestProducer {
    fn platform(&self) -> Platform {
        Platform::Tdx
    }

    fn produce(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let report = td_report(&self.device, report_data)?;
        let quote = get_quote(&self.qgs, &report)?;
        tdx::parse_quote(&quote)
            .map_err(|e| fail(format!("the QGS answered with a quote that does not parse: {e}")))?;
        Ok(PlatformEvidence { quote_or_report: quote, certificates: None, event_log: None })
    }
}

/// The 1024-byte TDREPORT for `report_data`.
pub fn td_report(device: &Path, report_data: &[u8; 64]) -> Result<[u8; TDREPORT_LEN], AttestationError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| fail(format!("{}: {e}", device.display())))?;
    let mut req = [0u8; 64 + TDREPORT_LEN];
    req[..64].copy_from_slice(report_data);
    // SAFETY: the request buffer is exactly the size the ioctl number encodes
    // and lives across the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TDX_CMD_GET_REPORT0 as _, req.as_mut_ptr()) };
    if rc != 0 {
        return Err(fail(format!("{}: TDX_CMD_GET_REPORT0: {}", device.display(), std::io::Error::last_os_error())));
    }
    Ok(req[64..].try_into().expect("1024 bytes"))
}

/// A `GET_QUOTE_REQ` message for one TD report (no attestation key id list).
pub fn quote_request(report: &[u8]) -> Vec<u8> {
    let size = (QGS_HEADER + 8 + report.len()) as u32;
    let mut m = Vec::with_capacity(size as usize);
    m.extend_from_slice(&1u16.to_le_bytes()); // major version
    m.extend_from_slice(&0u16.to_le_bytes()); // minor version
    m.extend_from_slice(&QGS_GET_QUOTE_REQ.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // error code
    m.extend_from_slice(&(report.len() as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // id list size
    m.extend_from_slice(report);
    m
}

/// The quote inside a `GET_QUOTE_RESP` message.
pub fn parse_quote_response(m: &[u8]) -> Result<Vec<u8>, String> {
    let u32_at = |at: usize| m.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let (Some(kind), Some(size), Some(error), Some(id_len), Some(quote_len)) =
        (u32_at(4), u32_at(8), u32_at(12), u32_at(16), u32_at(20))
    else {
        return Err(format!("response of {} bytes is shorter than its header", m.len()));
    };
    if m.get(..2) != Some(&1u16.to_le_bytes()[..]) {
        return Err("response major version is not 1".into());
    }
    if kind != QGS_GET_QUOTE_RESP {
        return Err(format!("response type {kind}, expected {QGS_GET_QUOTE_RESP} (GET_QUOTE_RESP)"));
    }
    if error != 0 {
        return Err(format!("the QGS reports error {error:#x}"));
    }
    if size as usize != m.len() {
        return Err(format!("response says {size} bytes, {} arrived", m.len()));
    }
    let start = 24usize.checked_add(id_len as usize).ok_or("id length overflows")?;
    let end = start.checked_add(quote_len as usize).ok_or("quote length overflows")?;
    if end != m.len() || quote_len == 0 {
        return Err(format!("id ({id_len}) and quote ({quote_len}) lengths do not fill the {} bytes", m.len()));
    }
    Ok(m[start..end].to_vec())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Asks the QGS for a quote of `report`.
pub fn get_quote(qgs: &QgsAddr, report: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let mut s: Box<dyn Stream> = match qgs {
        QgsAddr::Vsock { cid, port } => {
            let s = vsock::VsockStream::connect_with_cid_port(*cid, *port)
                .map_err(|e| fail(format!("QGS at vsock {cid}:{port}: {e}")))?;
            s.set_read_timeout(Some(QGS_TIMEOUT)).map_err(fail)?;
            Box::new(s)
        }
        QgsAddr::Unix(p) => {
            let s =
                std::os::unix::net::UnixStream::connect(p).map_err(|e| fail(format!("QGS at {}: {e}", p.display())))?;
            s.set_read_timeout(Some(QGS_TIMEOUT)).map_err(fail)?;
            Box::new(s)
        }
    };
    let msg = quote_request(report);
    s.write_all(&(msg.len() as u32).to_be_bytes())
        .and_then(|_| s.write_all(&msg))
        .map_err(|e| fail(format!("sending to the QGS: {e}")))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| fail(format!("reading the QGS answer: {e}")))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > tdx::MAX_QUOTE + 1024 {
        return Err(fail(format!("the QGS announces {len} bytes; the limit is {}", tdx::MAX_QUOTE + 1024)));
    }
    let mut resp = vec![0u8; len];
    s.read_exact(&mut resp).map_err(|e| fail(format!("reading the QGS answer: {e}")))?;
    parse_quote_response(&resp).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(quote: &[u8], error: u32) -> Vec<u8> {
        let size = (24 + quote.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&1u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&QGS_GET_QUOTE_RESP.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&error.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&(quote.len() as u32).to_le_bytes());
        m.extend_from_slice(quote);
        m
    }

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        // linux/tdx-guest.h: _IOWR('T', 1, struct tdx_report_req) = 0xc4405401.
        assert_eq!(TDX_CMD_GET_REPORT0, 0xc440_5401);
    }

    #[test]
    fn qgs_exchange_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("cocoon-qgs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qgs.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let quote = include_bytes!("../../tests/data/dcap-sample-quote.bin").to_vec();
        let q = quote.clone();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            c.read_exact(&mut len).unwrap();
            let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
            c.read_exact(&mut req).unwrap();
            let r = response(&q, 0);
            c.write_all(&(r.len() as u32).to_be_bytes()).unwrap();
            c.write_all(&r).unwrap();
            req
        });
        let got = get_quote(&QgsAddr::Unix(path.clone()), &[7; TDREPORT_LEN]).unwrap();
        assert_eq!(got, quote);
        let req = server.join().unwrap();
        assert_eq!(req, quote_request(&[7; TDREPORT_LEN]));
        assert_eq!(&req[8..12], &(16 + 8 + 1024u32).to_le_bytes());

        assert!(parse_quote_response(&response(b"q", 0x11)).unwrap_err().contains("error 0x11"));
        let mut short = response(b"quote", 0);
        short.pop();
        assert!(parse_quote_response(&short).is_err());
        assert!(parse_quote_response(&[1, 0, 0]).is_err());
    }

    #[test]
    fn a_file_that_is_not_the_device_gives_a_clear_error() {
        let f = std::env::temp_dir().join(format!("cocoon-not-tdx-{}", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        let e = td_report(&f, &[0; 64]).unwrap_err().to_string();
        assert!(e.contains("TDX_CMD_GET_REPORT0"), "{e}");
        let e = TdxGuestProducer::open(Path::new("/nonexistent/tdx_guest"), DEFAULT_QGS).err().unwrap().to_string();
        assert!(e.contains("does not exist: not a TDX guest"), "{e}");
    }
}
