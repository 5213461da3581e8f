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
    #[arg(long, default_value_t = Limits::default().max_body)]
    pub max_body: usize,
    /// Sealed requests forwarded to the enclave at once; past it the shim answers 503.
    #[arg(long, default_value_t = Limits::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Evidence, key and health requests forwarded at once (their own capacity;
    /// fresh evidence is batched in the enclave, so many may wait cheaply).
    #[arg(long, default_value_t = Limits::default().max_control_in_flight)]
    pub max_control_in_flight: usize,
    /// Client connections open at once; at the limit the longest-idle one is closed.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Client connections from one address (raise it when a proxy is your only client).
    #[arg(long, default_value_t = Limits::default().max_connections_per_source)]
    pub max_connections_per_source: usize,
    /// Requests in progress from one address.
    #[arg(long, default_value_t = Limits::default().max_in_flight_per_source)]
    pub max_in_flight_per_source: usize,
    /// Bytes of request bodies buffered at once, all clients together.
    #[arg(long, default_value_t = Limits::default().max_buffered)]
    pub max_buffered: usize,
    /// Slowest average upload rate in bytes per second (after --body-grace); 0: no minimum.
    #[arg(long, default_value_t = Limits::default().min_body_rate)]
    pub min_body_rate: u64,
    /// Seconds a request body may take before the minimum rate applies.
    #[arg(long, default_value_t = Limits::default().body_grace.as_secs_f64())]
    pub body_grace: f64,
    /// Seconds to wait for a request's headers, on a new or a kept-alive connection.
    #[arg(long, default_value_t = Limits::default().header_read_timeout.as_secs_f64())]
    pub header_timeout: f64,
    /// Seconds that requests in progress get to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = cocoon_runtime::DEFAULT_GRACE_S as f64)]
    pub grace: f64,
    /// Seconds to wait for the enclave's response head.
    #[arg(long, default_value_t = Limits::default().response_timeout.as_secs())]
    pub response_timeout: u64,
    /// Seconds of silence allowed inside a streamed response.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs())]
    pub idle_timeout: u64,
}

pub fn run() -> anyhow::Result<()> {
    cocoon_runtime::init_logging("info");
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
        max_control_in_flight: args.max_control_in_flight,
        max_connections: args.max_connections,
        max_connections_per_source: args.max_connections_per_source,
        max_in_flight_per_source: args.max_in_flight_per_source,
        max_buffered: args.max_buffered,
        min_body_rate: args.min_body_rate,
        body_grace: seconds("--body-grace", args.body_grace)?,
        header_read_timeout: seconds("--header-timeout", args.header_timeout)?,
        response_timeout: Duration::from_secs(args.response_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        ..Limits::default()
    };
    let grace = seconds("--grace", args.grace)?;
    let fds = cocoon_runtime::raise_fd_limit();
    if fds < (args.max_connections as u64) + 64 {
        tracing::warn!(
            "only {fds} file descriptors may be open; --max-connections {} cannot be reached",
            args.max_connections
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = listen(args.listen).with_context(|| format!("binding {}", args.listen))?;
        tracing::info!(listen = %listener.local_addr()?, enclave = %args.enclave, "host shim ready");
        let shim = Shim::new(args.enclave, measurements, limits);
        serve(listener, shim, cocoon_runtime::shutdown_signal(), grace).await?;
        tracing::info!("host shim stopped");
        Ok(())
    })
}

/// Connections the kernel queues before the shim accepts them (capped by
/// `net.core.somaxconn`). A flood of connects beyond the usual 1,024 would
/// otherwise wait out SYN retransmissions instead of reaching the admission,
/// which closes idle connections to make room.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("{flag}: expected a number of seconds, found {v}"))
}
