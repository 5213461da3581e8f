//! Connections to the enclave: `unix:/path`, `vsock:CID:PORT`, and hybrid
//! vsock `vsock-mux:/path/to/uds:PORT` (Firecracker, Cloud Hypervisor,
//! vhost-device-vsock: a Unix socket on which the host writes
//! `CONNECT <port>\n` and reads `OK <assigned port>\n`).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest acknowledgement line a vsock multiplexer may send.
const MAX_MUX_REPLY: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Unix(PathBuf),
    Vsock { cid: u32, port: u32 },
    VsockMux { path: PathBuf, port: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("enclave address {0:?}: expected unix:/path, vsock:CID:PORT or vsock-mux:/path:PORT")]
    BadAddress(String),
    #[error("connecting to the enclave at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to the enclave at {addr}: timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("hybrid vsock handshake with {addr}: expected \"OK <port>\", got {got:?}")]
    Handshake { addr: String, got: String },
}

impl std::str::FromStr for Upstream {
    type Err = UpstreamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UpstreamError::BadAddress(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            Ok(Upstream::Unix(path.into()))
        } else if let Some(rest) = s.strip_prefix("vsock-mux:") {
            let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if path.is_empty() {
                return Err(bad());
            }
            Ok(Upstream::VsockMux { path: path.into(), port: port.parse().map_err(|_| bad())? })
        } else if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            Ok(Upstream::Vsock { cid: cid.parse().map_err(|_| bad())?, port: port.parse().map_err(|_| bad())? })
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Unix(p) => write!(f, "unix:{}", p.display()),
            Upstream::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Upstream::VsockMux { path, port } => write!(f, "vsock-mux:{}:{port}", path.display()),
        }
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Upstream {
    pub async fn connect(&self, timeout: Duration) -> Result<Box<dyn Io>, UpstreamError> {
        match tokio::time::timeout(timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { addr: self.to_string(), after: timeout }),
        }
    }

    async fn connect_inner(&self) -> Result<Box<dyn Io>, UpstreamError> {
        let err = |source| UpstreamError::Connect { addr: self.to_string(), source };
        match self {
            Upstream::Unix(path) => Ok(Box::new(UnixStream::connect(path).await.map_err(err)?)),
            Upstream::Vsock { cid, port } => {
                let s =
                    tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await.map_err(err)?;
                Ok(Box::new(s))
            }
            Upstream::VsockMux { path, port } => {
                let mut s = UnixStream::connect(path).await.map_err(err)?;
                s.write_all(format!("CONNECT {port}\n").as_bytes()).await.map_err(err)?;
                let line = read_line(&mut s).await.map_err(err)?;
                let ok = line.strip_prefix("OK ").is_some_and(|p| p.trim().parse::<u32>().is_ok());
                if !ok {
                    return Err(UpstreamError::Handshake { addr: self.to_string(), got: line });
                }
                Ok(Box::new(s))
            }
        }
    }
}

/// Reads one `\n`-terminated line byte by byte, so that nothing after the
/// acknowledgement (the enclave's first bytes) is consumed.
async fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_MUX_REPLY {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!("unix:/a/b".parse::<Upstream>().unwrap(), Upstream::Unix("/a/b".into()));
        assert_eq!("vsock:3:4000".parse::<Upstream>().unwrap(), Upstream::Vsock { cid: 3, port: 4000 });
        assert_eq!(
            "vsock-mux:/run/v.sock:4000".parse::<Upstream>().unwrap(),
            Upstream::VsockMux { path: "/run/v.sock".into(), port: 4000 }
        );
        for bad in ["tcp:1", "vsock:3", "vsock:x:1", "vsock-mux:/p", "unix:", "vsock-mux::5"] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }
}
