//! The `cocoon-enclave` command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use cocoon_attestation::EvidenceProducer;
use cocoon_attestation::detect::{TeePaths, hardware_producer};
use cocoon_attestation::simulated::SimulatedProducer;
use cocoon_attestation::tdx_guest::QgsAddr;
use cocoon_engine::Engine;
use cocoon_protocol::Platform;

use crate::model_config::{ModelSection, StaticConfig, start_engine};
use crate::state::{EnclaveState, ServeLimits};
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
    /// configfs-tsm report directory (quotes and reports for both TDX and SEV-SNP).
    #[arg(long, env = "COCOON_TSM_ROOT", default_value = cocoon_attestation::configfs_tsm::DEFAULT_ROOT)]
    pub tsm_root: PathBuf,
    /// TDX guest device, used when configfs-tsm is missing.
    #[arg(long, default_value = cocoon_attestation::tdx_guest::DEFAULT_DEVICE)]
    pub tdx_device: PathBuf,
    /// The host's TDX Quote Generation Service for the device path: vsock:CID:PORT or unix:/path.
    #[arg(long, default_value = "vsock:2:4050")]
    pub qgs: String,
    /// SEV-SNP: the VMPL reports are requested for.
    #[arg(long, default_value_t = 0)]
    pub vmpl: u32,
    /// The static config file whose SHA-256 goes into the claims.
    #[arg(long, env = "COCOON_CONFIG")]
    pub config: Option<PathBuf>,
    /// The model: a GGUF file or a Hugging Face directory (overrides the config's model.path).
    #[arg(long, env = "COCOON_MODEL")]
    pub model: Option<PathBuf>,
    /// The name clients ask for (overrides model.id; default: the file name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Refuse to start unless the model files hash to this (sha256:HEX; overrides model.digest).
    #[arg(long)]
    pub model_digest: Option<String>,
    /// Longest prompt plus completion, in tokens (overrides model.context_length).
    #[arg(long)]
    pub context_length: Option<usize>,
    /// cpu, or cuda when built with the `cuda` feature (overrides model.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Sequences decoded together (overrides model.max_batch).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Seconds a sealed request's date may differ from the enclave's clock.
    #[arg(long, default_value_t = crate::replay::DEFAULT_WINDOW.as_secs())]
    pub replay_window: u64,
    /// Sealed requests remembered for replay detection (32 bytes each).
    #[arg(long, default_value_t = crate::replay::DEFAULT_CAPACITY)]
    pub replay_capacity: usize,
    /// Shortest time between two hardware reports for fresh evidence, in
    /// milliseconds; verifiers arriving meanwhile share the next report.
    #[arg(long, default_value_t = crate::fresh_evidence::DEFAULT_MIN_INTERVAL.as_millis() as u64)]
    pub evidence_interval_ms: u64,
    /// Verifiers that may wait for fresh evidence at once.
    #[arg(long, default_value_t = crate::fresh_evidence::DEFAULT_MAX_WAITING)]
    pub max_evidence_waiting: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds that requests in progress get to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = cocoon_runtime::DEFAULT_GRACE_S)]
    pub grace: u64,
    /// Simulated platform only: milliseconds each report takes, standing in
    /// for a real quote's latency (benchmarks).
    #[arg(long, default_value_t = 0, requires = "insecure_simulated")]
    pub simulated_report_delay_ms: u64,
    /// Print the digest of the model at --model (for the config's model.digest) and exit.
    #[arg(long, requires = "model")]
    pub print_model_digest: bool,
}

impl Args {
    /// The config's model section with the command line's overrides applied.
    fn model_section(&self, config: &StaticConfig) -> Option<ModelSection> {
        let mut m = config.model.clone().unwrap_or_default();
        m.path = self.model.clone().or(m.path);
        m.id = self.model_id.clone().or(m.id);
        m.digest = self.model_digest.clone().or(m.digest);
        m.context_length = self.context_length.or(m.context_length);
        m.device = self.device.clone().or(m.device);
        m.max_batch = self.max_batch.or(m.max_batch);
        m.path.is_some().then_some(m)
    }
}

fn parse_qgs(s: &str) -> anyhow::Result<QgsAddr> {
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(QgsAddr::Unix(p.into()));
    }
    let rest =
        s.strip_prefix("vsock:").with_context(|| format!("--qgs {s:?}: expected vsock:CID:PORT or unix:/path"))?;
    let (cid, port) = rest.split_once(':').with_context(|| format!("--qgs {s:?}: expected vsock:CID:PORT"))?;
    Ok(QgsAddr::Vsock { cid: cid.parse().context("--qgs CID")?, port: port.parse().context("--qgs PORT")? })
}

fn producer(args: &Args) -> anyhow::Result<Arc<dyn EvidenceProducer>> {
    let paths = TeePaths {
        tsm_root: args.tsm_root.clone(),
        tdx_device: args.tdx_device.clone(),
        qgs: parse_qgs(&args.qgs)?,
        vmpl: args.vmpl,
        ..TeePaths::default()
    };
    let want = match args.platform.as_str() {
        "auto" => None,
        "simulated" if args.insecure_simulated => {
            eprintln!(
                "WARNING: SIMULATED EVIDENCE. This enclave's attestation is signed by a key made in software; \
                 it proves nothing about the machine. Never use this outside development."
            );
            let delay = std::time::Duration::from_millis(args.simulated_report_delay_ms);
            return Ok(Arc::new(SimulatedProducer::with_delay(delay)));
        }
        "simulated" => bail!("--platform simulated needs the explicit --insecure-simulated flag"),
        other => Some(other.parse::<Platform>().map_err(|e| anyhow::anyhow!("--platform: {e}"))?),
    };
    let p = hardware_producer(want, &paths).map_err(|e| {
        anyhow::anyhow!("{e}; refusing to fall back to simulated evidence (for development: --platform simulated --insecure-simulated)")
    })?;
    tracing::info!(platform = %p.platform(), "hardware evidence producer ready");
    Ok(p)
}

/// Adds the GPUs' evidence to every document when NVIDIA's driver is there:
/// each GPU is attested here first (CC mode on, report and chain verified
/// for a fresh nonce), and only then declared ready for work. A machine
/// without GPUs serves without GPU evidence; a worker configured for
/// `device = "cuda"` does not start unless its GPUs attest.
fn with_gpus(producer: Arc<dyn EvidenceProducer>, wants_cuda: bool) -> anyhow::Result<Arc<dyn EvidenceProducer>> {
    use cocoon_attestation::nvml::{LIBRARY, Nvml, attest_locally};
    let refuse = |why: String| -> anyhow::Result<Arc<dyn EvidenceProducer>> {
        if wants_cuda {
            bail!("{why}; a worker with device \"cuda\" starts only with GPUs that attest");
        }
        tracing::warn!("{why}: serving without GPU evidence");
        Ok(producer.clone())
    };
    let nvml = match Nvml::open(None) {
        Ok(Some(n)) => n,
        Ok(None) if wants_cuda => return refuse(format!("no NVIDIA driver ({LIBRARY} is missing)")),
        Ok(None) => {
            tracing::info!("no NVIDIA GPU driver: the evidence has no GPU entries");
            return Ok(producer);
        }
        Err(e) => return refuse(e.to_string()),
    };
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).context("a nonce for the GPUs' self-check")?;
    match attest_locally(&nvml, &nonce, crate::state::unix_now()) {
        Ok(gpus) => {
            nvml.set_ready()?;
            for (i, g) in gpus.iter().enumerate() {
                tracing::info!(
                    gpu = i,
                    chip = %g.chip,
                    driver = g.driver_version.as_deref().unwrap_or("?"),
                    vbios = g.vbios_version.as_deref().unwrap_or("?"),
                    "GPU attested and declared ready"
                );
            }
            Ok(Arc::new(cocoon_attestation::WithGpus { platform: producer, gpus: Arc::new(nvml) }))
        }
        Err(e) => refuse(e.to_string()),
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

/// Runs the enclave. `engine` replaces the configured model (the tests' echo
/// engine); without it the model comes from the config and the command line,
/// and with no model at all the API answers "no model loaded".
pub fn run(engine: Option<Arc<dyn Engine>>) -> anyhow::Result<()> {
    cocoon_runtime::init_logging("info");
    let args = Args::parse();
    if let (true, Some(path)) = (args.print_model_digest, &args.model) {
        let digest = cocoon_engine::model_digest(path).with_context(|| format!("hashing {}", path.display()))?;
        println!("sha256:{}", hex::encode(digest));
        return Ok(());
    }
    let producer = producer(&args)?;
    let config = read_config(&args.config)?;
    let static_config = StaticConfig::parse(&config)?;
    let wants_cuda = args.model_section(&static_config).and_then(|m| m.device).as_deref() == Some("cuda");
    let producer = with_gpus(producer, wants_cuda)?;
    let engine = match (engine, args.model_section(&static_config)) {
        (Some(e), _) => Some(e),
        (None, Some(m)) => Some(start_engine(&m).context("loading the model")?),
        (None, None) => {
            tracing::warn!("no model configured (--model or [model] in --config): the API answers \"no model loaded\"");
            None
        }
    };
    cocoon_runtime::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let terms = static_config.terms(engine.is_some());
        let limits = ServeLimits {
            replay_window: Duration::from_secs(args.replay_window),
            replay_capacity: args.replay_capacity,
            evidence_interval: Duration::from_millis(args.evidence_interval_ms),
            max_evidence_waiting: args.max_evidence_waiting,
            max_connections: args.max_connections,
        };
        let state = EnclaveState::new(producer, engine, &config, terms, limits).context("building evidence")?;
        let listener = Listener::bind(&args.listen).await?;
        tracing::info!(
            listen = ?args.listen,
            platform = %state.claims.platform,
            model = state.claims.model.as_ref().map(|m| m.id.as_str()).unwrap_or("none"),
            "enclave ready"
        );
        let state = Arc::new(state);
        let grace = Duration::from_secs(args.grace);
        crate::server::serve(listener, state, cocoon_runtime::shutdown_signal(), grace).await?;
        tracing::info!("enclave stopped");
        Ok(())
    })
}
