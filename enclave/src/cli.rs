//! The `cocoon-enclave` command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;

use cocoon_attestation::EvidenceProducer;
use cocoon_attestation::simulated::SimulatedProducer;
use cocoon_engine::Engine;

use crate::state::EnclaveState;
use crate::transport::{ListenAddr, Listener};

/// Largest static config file accepted.
const MAX_CONFIG: u64 = 1 << 20;

#[derive(Debug, Parser)]
#[command(name = "cocoon-enclave", version, about = "Confidential inference worker: the program inside the TEE")]
pub struct Args {
    /// Where to listen: vsock:PORT inside a VM, unix:/path for development.
    #[arg(long, env = "COCOON_LISTEN", default_value = "vsock:4000")]
    pub listen: ListenAddr,
    /// Evidence platform: auto (detect the TEE), tdx, sev-snp, or simulated.
    #[arg(long, env = "COCOON_PLATFORM", default_value = "auto")]
    pub platform: String,
    /// Allow the simulated platform. Its evidence proves nothing; every default
    /// verifier policy refuses it.
    #[arg(long)]
    pub insecure_simulated: bool,
    /// The static config file whose SHA-256 goes into the claims.
    #[arg(long, env = "COCOON_CONFIG")]
    pub config: Option<PathBuf>,
}

fn producer(args: &Args) -> anyhow::Result<Arc<dyn EvidenceProducer>> {
    let platform = match args.platform.as_str() {
        "auto" => detect_tee().unwrap_or("none"),
        p => p,
    };
    match platform {
        "simulated" if args.insecure_simulated => {
            eprintln!(
                "WARNING: SIMULATED EVIDENCE. This enclave's attestation is signed by a key made in software; \
                 it proves nothing about the machine. Never use this outside development."
            );
            Ok(Arc::new(SimulatedProducer::new()))
        }
        "simulated" => bail!("--platform simulated needs the explicit --insecure-simulated flag"),
        "tdx" | "sev-snp" => bail!(
            "{platform}: the hardware evidence producer is not part of this build yet; \
             refusing to fall back to simulated evidence"
        ),
        "none" => bail!(
            "no TEE found (no /dev/tdx_guest, /dev/sev-guest or configfs-tsm); for development use \
             --platform simulated --insecure-simulated"
        ),
        other => bail!("unknown platform {other:?}; expected auto, tdx, sev-snp or simulated"),
    }
}

/// The TEE this guest runs in, from the kernel's guest devices.
fn detect_tee() -> Option<&'static str> {
    if std::path::Path::new("/dev/tdx_guest").exists() {
        Some("tdx")
    } else if std::path::Path::new("/dev/sev-guest").exists() {
        Some("sev-snp")
    } else {
        None
    }
}

fn read_config(path: &Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let len = std::fs::metadata(path).with_context(|| format!("static config {}", path.display()))?.len();
    if len > MAX_CONFIG {
        bail!("static config {} is {len} bytes; the limit is {MAX_CONFIG}", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading static config {}", path.display()))
}

/// Runs the enclave with the given engine (none: the API answers "no model loaded").
pub fn run(engine: Option<Arc<dyn Engine>>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COCOON_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let producer = producer(&args)?;
    let config = read_config(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let state = EnclaveState::new(producer, engine, &config).context("building evidence")?;
        let listener = Listener::bind(&args.listen).await?;
        tracing::info!(
            listen = ?args.listen,
            platform = %state.claims.platform,
            model = state.claims.model.as_ref().map(|m| m.id.as_str()).unwrap_or("none"),
            "enclave ready"
        );
        let state = Arc::new(state);
        tokio::select! {
            r = crate::server::serve(listener, state) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
