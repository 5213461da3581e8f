//! The `cocoon-host` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::proxy::{Limits, Shim, serve};
use crate::upstream::Upstream;

/// Largest measurements file served.
const MAX_MEASUREMENTS: u64 = 1 << 20;

#[derive(Debug, Parser)]
#[command(name = "cocoon-host", version, about = "Untrusted host shim: forwards sealed requests to the enclave")]
pub struct Args {
    /// TCP address to serve HTTP on.
    #[arg(long, env = "COCOON_HOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The enclave: vsock:CID:PORT, vsock-mux:/path/to/uds:PORT, or unix:/path.
    #[arg(long, env = "COCOON_ENCLAVE")]
    pub enclave: Upstream,
    /// The reference values (`make measure` output) served at /v1/measurements.
    #[arg(long, env = "COCOON_MEASUREMENTS")]
    pub measurements: Option<PathBuf>,
    /// Largest request body forwarded, in bytes.
    #[arg(long, default_value_t = cocoon_protocol::limits::MAX_SEALED_REQUEST)]
    pub max_body: usize,
    /// Requests forwarded at once; past it the shim answers 503.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Client connections open at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds to wait for the enclave's response head.
    #[arg(long, default_value_t = 600)]
    pub response_timeout: u64,
    /// Seconds of silence allowed inside a streamed response.
    #[arg(long, default_value_t = 120)]
    pub idle_timeout: u64,
}

pub fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COCOON_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let measurements = match &args.measurements {
        Some(p) => {
            let len = std::fs::metadata(p).with_context(|| format!("measurements file {}", p.display()))?.len();
            if len > MAX_MEASUREMENTS {
                bail!("measurements file {} is {len} bytes; the limit is {MAX_MEASUREMENTS}", p.display());
            }
            Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?.into())
        }
        None => None,
    };
    let limits = Limits {
        max_body: args.max_body,
        max_in_flight: args.max_in_flight,
        max_connections: args.max_connections,
        response_timeout: Duration::from_secs(args.response_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        ..Limits::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        tracing::info!(listen = %listener.local_addr()?, enclave = %args.enclave, "host shim ready");
        let shim = Shim::new(args.enclave, measurements, limits);
        tokio::select! {
            r = serve(listener, shim) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
