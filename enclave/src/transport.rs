//! Listeners: AF_VSOCK in a VM, a Unix socket in development.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the enclave listens: `vsock:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock { port: u32 },
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if let Some(port) = s.strip_prefix("vsock:") {
            let port = port.parse().with_context(|| format!("vsock port in {s:?} is not a number"))?;
            Ok(ListenAddr::Vsock { port })
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("empty Unix socket path in {s:?}");
            }
            Ok(ListenAddr::Unix(path.into()))
        } else {
            bail!("listen address {s:?}: expected vsock:PORT or unix:/path")
        }
    }
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

pub enum Listener {
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> anyhow::Result<Self> {
        match addr {
            ListenAddr::Vsock { port } => {
                let a = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                let l = tokio_vsock::VsockListener::bind(a).with_context(|| format!("binding vsock port {port}"))?;
                Ok(Listener::Vsock(l))
            }
            ListenAddr::Unix(path) => {
                // A stale socket from a previous run would make bind fail.
                if path.exists() {
                    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                let l = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    pub async fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Listener::Vsock(l) => Ok(Box::new(l.accept().await?.0)),
            Listener::Unix(l, _) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
