//! `cocoon`: verify a worker, chat with it through the sealed path.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use cocoon_attestation::{
    Assessment, HardwareReport, Policy, ReferenceValues, RuleOutcome, VerifiedWorker, assess, parse_rfc3339,
    read_limited, rfc3339,
};
use cocoon_client::http::HttpClient;
use cocoon_client::serve::Runner;
use cocoon_client::worker::{fetch_evidence, unix_now};
use cocoon_client::{ChatOptions, EndorsementSources, Worker};
use cocoon_protocol::{Claims, NanoTon, limits};

#[derive(Debug, Parser)]
#[command(name = "cocoon", version, about = "Client and verifier for confidential inference workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct VerifierArgs {
    /// Policy file (TOML or JSON); the default accepts TDX and SEV-SNP only, with reference values.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Reference values a worker's measurements must match (the JSON `make measure` prints); repeatable.
    #[arg(long = "reference-values", value_name = "FILE")]
    reference_values: Vec<PathBuf>,
    /// DEVELOPMENT ONLY: accept simulated evidence and debug guests, which prove nothing.
    #[arg(long)]
    insecure_simulated: bool,
    /// TDX collateral JSON (PCK CRL, root CA CRL, TCB info, QE identity).
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// A PCCS to fetch TDX collateral from, e.g. http://pccs.local:8081.
    #[arg(long, env = "COCOON_PCCS_URL", value_name = "URL")]
    pccs: Option<String>,
    /// Where fetched collateral is kept until its next update (default ~/.cache/cocoon/collateral).
    #[arg(long, value_name = "DIR")]
    collateral_cache: Option<PathBuf>,
    /// SEV-SNP VCEK/VLEK and ASK certificates (PEM or DER) for reports that come without them.
    #[arg(long, value_name = "FILE")]
    snp_certs: Option<PathBuf>,
    /// CRLs and OCSP responses (DER or PEM) for the GPU attestation chains; repeatable.
    /// The policy's gpu.revocation says what certificates without them mean.
    #[arg(long = "gpu-revocation", value_name = "FILE")]
    gpu_revocation: Vec<PathBuf>,
}

/// The network's registry, whose lists a client applies on top of its own policy.
#[derive(Debug, clap::Args)]
struct RegistryArgs {
    /// Use only proxies, worker images and models this registry contract lists
    /// (its address, as `cocoon registry show` prints it).
    #[arg(long, value_name = "ADDR")]
    registry: Option<String>,
    /// How often the registry is read again (seconds); a removal takes effect then.
    #[arg(long, default_value_t = 60, requires = "registry")]
    registry_refresh: u64,
    #[command(flatten)]
    chain: cocoon_client::channel_cli::ChainArgs,
}

impl RegistryArgs {
    /// The registry, read once (an error when it cannot be), when one is given.
    async fn watch(&self) -> anyhow::Result<Option<std::sync::Arc<cocoon_client::allowlist::Watched>>> {
        let Some(address) = &self.registry else { return Ok(None) };
        let address = cocoon_ton::channel::parse_address("--registry", address)?;
        let chain = cocoon_client::channel_cli::chain(&self.chain)?;
        let every = std::time::Duration::from_secs(self.registry_refresh);
        let watched = cocoon_client::allowlist::Watched::start(chain, address, every)
            .await
            .with_context(|| format!("reading the registry {}", self.registry.as_deref().unwrap_or_default()))?;
        Ok(Some(watched))
    }
}

impl VerifierArgs {
    fn policy(&self) -> anyhow::Result<Policy> {
        let mut p = match &self.policy {
            Some(path) => Policy::from_file(path)?,
            None => Policy::default(),
        };
        for f in &self.reference_values {
            p.reference_values.push(ReferenceValues::from_file(f)?);
        }
        if self.insecure_simulated {
            eprintln!(
                "WARNING: --insecure-simulated: simulated evidence and debug guests will be accepted; \
                 they prove nothing about the worker."
            );
            p.allow_simulated = true;
            p.development = true;
        }
        Ok(p)
    }

    fn sources(&self) -> EndorsementSources {
        let home_cache = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cocoon/collateral"));
        EndorsementSources {
            collateral_file: self.collateral.clone(),
            pccs_url: self.pccs.clone(),
            cache_dir: self.collateral_cache.clone().or(home_cache),
            snp_certs: self.snp_certs.clone(),
            gpu_revocation: self.gpu_revocation.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and verify a worker's evidence, and print what was verified.
    Attest {
        /// The worker's host shim, e.g. http://127.0.0.1:8080
        url: String,
        #[command(flatten)]
        verifier: VerifierArgs,
        /// Ask for fresh evidence bound to a new random nonce.
        #[arg(long)]
        nonce: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify an evidence document saved to a file (CBOR, as `GET /v1/attestation` serves it).
    VerifyEvidence {
        file: PathBuf,
        #[command(flatten)]
        verifier: VerifierArgs,
        /// The nonce (hex) the evidence was requested with, if any.
        #[arg(long)]
        nonce: Option<String>,
        /// Verify as of this time (RFC 3339, e.g. 2025-06-20T00:00:00Z) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the launch measurements of an image for a static config: the
    /// reference values (JSON on stdout) a genuine worker's evidence must show.
    Measure {
        /// Image directory: vmlinuz, initrd.img, cmdline, OVMF.inteltdx.fd and/or OVMF.amdsev.fd.
        #[arg(long, default_value = "guest-image/out")]
        image: PathBuf,
        /// The static config the worker is launched with.
        #[arg(long)]
        config: PathBuf,
        /// vCPUs of the VM (SEV-SNP: one VMSA is measured per vCPU).
        #[arg(long, default_value_t = 4)]
        vcpus: u32,
        /// SEV-SNP vCPU model as given to QEMU's -cpu.
        #[arg(long, default_value = "EPYC-Milan")]
        vcpu_type: String,
        /// Guest RAM as given to QEMU's -m (MiB, or with a K/M/G/T suffix); TDX's RTMR1 depends on it.
        #[arg(long, default_value = "4G", value_parser = cocoon_measurements::reference::parse_memory_size)]
        memory: u64,
        /// TDX RTMR0 observed on a reference boot of the same host stack (repeatable); left
        /// unconstrained without it, since it measures the host's ACPI tables.
        #[arg(long, value_parser = cocoon_measurements::reference::parse_register)]
        tdx_rtmr0: Vec<[u8; 48]>,
    },
    /// GPU reference values from NVIDIA's reference integrity manifests
    /// (driver and VBIOS RIMs): each RIM's XML signature and signer chain are
    /// verified to the pinned NVIDIA RIM root, then its golden measurements are
    /// printed as JSON for a policy's `gpu.reference_value_files`.
    MeasureGpu {
        /// RIM files (SWID tags, as NVIDIA's RIM service serves them).
        #[arg(required = true)]
        rims: Vec<PathBuf>,
        /// Verify as of this time (RFC 3339) instead of now: RIM signers'
        /// certificates are short-lived, and an archived RIM verifies only
        /// at a time inside its signer's window.
        #[arg(long)]
        at: Option<String>,
    },
    /// Verify the worker, send a sealed chat request, stream the answer, verify the receipt.
    Chat {
        url: String,
        /// The model to ask for.
        #[arg(long)]
        model: String,
        /// The question.
        prompt: String,
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        max_tokens: Option<u32>,
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        verifier: VerifierArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Run the client runner: an OpenAI-compatible API on loopback that routes
    /// through a proxy (or to one worker), verifies, seals, pays and streams.
    Serve {
        /// The proxy to route through, e.g. http://proxy.example:8090
        #[arg(long, conflicts_with = "worker", required_unless_present = "worker")]
        proxy: Option<String>,
        /// One worker to talk to directly, without a proxy.
        #[arg(long)]
        worker: Option<String>,
        /// Where apps connect (loopback unless you mean otherwise).
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
        /// The client's account key (created with mode 0600 when missing).
        #[arg(long, env = "COCOON_CLIENT_KEY")]
        key: Option<PathBuf>,
        /// The most one request may cost, commission included, unless the app
        /// sends x-cocoon-max-cost (nanoTON). Each request signs for (and the
        /// proxy reserves) only what it can cost at the routed worker's attested
        /// prices, its prompt plus `max_tokens`, when that is less.
        #[arg(long, default_value_t = NanoTon(100_000_000))]
        max_cost: NanoTon,
        /// Pay the proxy through this payment channel (a file from `cocoon channel
        /// open`): a voucher for each verified charge. Without it, the proxy's
        /// operator credits the account.
        #[arg(long, requires = "proxy")]
        channel: Option<PathBuf>,
        /// Evidence of the proxy and of its workers is verified under this policy.
        #[command(flatten)]
        verifier: VerifierArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// A TON wallet of the client's key (or a mnemonic): its address and balance.
    #[command(subcommand)]
    Wallet(cocoon_client::channel_cli::WalletCommand),
    /// Payment channels on TON: open, top up, sign vouchers, claim, close.
    #[command(subcommand)]
    Channel(cocoon_client::channel_cli::ChannelCommand),
    /// The network's registry on TON: allowed images, models and proxies.
    #[command(subcommand)]
    Registry(cocoon_client::registry_cli::RegistryCommand),
    /// A worker's pay: fetch the proxy's newest voucher for this wallet, keep it
    /// durably, list what is held and claim it on chain.
    Payouts {
        /// Proxies to fetch vouchers from (repeatable); without one, only what is held is listed.
        #[arg(long)]
        proxy: Vec<String>,
        /// Where vouchers are kept (default ~/.local/share/cocoon/payouts).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Claim every voucher that pays more than --min-claim.
        #[arg(long)]
        claim: bool,
        /// nanoTON below which a claim is not worth its fee (about 0.006 TON).
        /// A channel whose close was requested is claimed in full regardless.
        #[arg(long, default_value_t = 100_000_000)]
        min_claim: u64,
        /// Refuse vouchers on channels that leave less than this many seconds
        /// to claim after a close request.
        #[arg(long, default_value_t = cocoon_client::payouts::DEFAULT_MIN_DISPUTE_WINDOW)]
        min_dispute_window: u32,
        /// Keep running: fetch, check and claim every SECONDS (a close request
        /// is answered with a claim within one interval).
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
        #[command(flatten)]
        wallet: cocoon_client::channel_cli::WalletArgs,
        #[command(flatten)]
        chain: cocoon_client::channel_cli::ChainArgs,
    },
    /// Print the client's account key (the public key a proxy credits), creating it if needed.
    Key {
        #[arg(long, env = "COCOON_CLIENT_KEY")]
        key: Option<PathBuf>,
    },
}

fn key_path(key: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    cocoon_client::cli_key_path(key)
}

fn load_key(key: Option<PathBuf>) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let path = key_path(key)?;
    let (k, created) = cocoon_client::keyfile::load_or_create(&path)?;
    if created {
        eprintln!("created a new client key at {} (mode 0600)", path.display());
    }
    Ok(k)
}

fn print_claims(claims: &Claims) {
    eprintln!("image version   {}", claims.image_version);
    match &claims.model {
        Some(m) => eprintln!("model           {} (sha256 {})", m.id, hex::encode(&m.digest)),
        None => eprintln!("model           none loaded"),
    }
    eprintln!("config digest   {}", hex::encode(&claims.config_digest));
    eprintln!("receipt key     {}", hex::encode(&claims.receipt_key));
    eprintln!("keys issued     {}", rfc3339(claims.issued_at));
}

fn print_hardware(hw: &HardwareReport) {
    match hw {
        HardwareReport::Tdx(r) => {
            eprintln!("TCB status      {} {}", r.tcb_status, r.advisory_ids.join(" "));
            eprintln!("TEE TCB SVN     {}", hex::encode(r.tee_tcb_svn));
            eprintln!("TD attributes   {}{}", hex::encode(r.td_attributes), if r.debug() { " (DEBUG)" } else { "" });
            for (name, v) in
                [("MRTD", &r.mrtd), ("RTMR0", &r.rtmr0), ("RTMR1", &r.rtmr1), ("RTMR2", &r.rtmr2), ("RTMR3", &r.rtmr3)]
            {
                eprintln!("{name:<15} {}", hex::encode(v));
            }
        }
        HardwareReport::SevSnp(r) => {
            eprintln!("chip            AMD {} ({}), report v{}", r.generation, r.signing_key, r.version);
            eprintln!("measurement     {}", hex::encode(r.measurement));
            eprintln!("host data       {}", hex::encode(r.host_data));
            eprintln!("reported TCB    {}", r.reported_tcb);
            eprintln!(
                "current TCB     {}{}",
                r.current_tcb,
                if r.reported_tcb_behind_current { " (reported TCB is behind)" } else { "" }
            );
            eprintln!(
                "guest policy    {:#x} (debug {}, migration agent {}, SMT {}), VMPL {}",
                r.policy.raw, r.policy.debug_allowed, r.policy.migrate_ma_allowed, r.policy.smt_allowed, r.vmpl
            );
        }
        HardwareReport::Simulated => eprintln!("hardware        none: SIMULATED evidence"),
    }
}

fn print_rules(rules: &[RuleOutcome]) {
    for r in rules {
        eprintln!("  [{}] {:<28} {}", if r.passed { "ok" } else { "FAIL" }, r.rule, r.detail);
    }
}

fn print_verified(v: &VerifiedWorker) {
    eprintln!("platform        {}", v.platform());
    print_hardware(v.hardware());
    print_claims(v.claims());
    print_gpus(v.gpus());
    print_rules(v.rules());
}

/// The GPUs whose reports verified and passed the policy, like the CPU rows.
fn print_gpus(gpus: &[cocoon_attestation::nvidia::VerifiedGpu]) {
    for (i, g) in gpus.iter().enumerate() {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        eprintln!(
            "gpu {i}           {} {} ({}), driver {}, VBIOS {}, board {}",
            g.architecture,
            g.chip,
            g.attestation_key,
            or_unknown(&g.driver_version),
            or_unknown(&g.vbios_version),
            or_unknown(&g.board_id)
        );
    }
}

/// Prints an assessment and turns a refusal into an error.
fn report(a: Assessment, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&a.summary())?);
    } else {
        if let Some(p) = a.platform {
            eprintln!("platform        {p}");
        }
        if let Some(hw) = &a.hardware {
            print_hardware(hw);
        }
        if let Some(c) = &a.claims {
            print_claims(c);
        }
        print_gpus(&a.gpus);
        print_rules(&a.rules);
    }
    let accepted = a.passed();
    a.into_result().context("evidence refused")?;
    if !json && accepted {
        eprintln!("evidence accepted");
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attest { url, verifier, nonce, json } => {
            let policy = verifier.policy()?;
            let http = HttpClient::default();
            let (evidence, nonce) = fetch_evidence(&http, &url, nonce).await?;
            let now = unix_now();
            let endorsements = verifier.sources().endorsements(&http, &evidence, now).await?;
            report(assess(&evidence, &policy, nonce.as_deref(), now, &endorsements), json)?;
        }
        Command::VerifyEvidence { file, verifier, nonce, at, json } => {
            let policy = verifier.policy()?;
            let evidence = read_limited(&file, limits::MAX_EVIDENCE as u64)
                .map_err(|e| anyhow::anyhow!("{}: {e} (evidence documents)", file.display()))?;
            let nonce = nonce.map(|n| hex::decode(n.trim())).transpose().context("--nonce is not hex")?;
            let now = match &at {
                Some(t) => parse_rfc3339(t)
                    .with_context(|| format!("--at {t:?}: expected RFC 3339, e.g. 2025-06-20T00:00:00Z"))?,
                None => unix_now(),
            };
            let endorsements = verifier.sources().endorsements(&HttpClient::default(), &evidence, now).await?;
            report(assess(&evidence, &policy, nonce.as_deref(), now, &endorsements), json)?;
        }
        Command::Measure { image, config, vcpus, vcpu_type, memory, tdx_rtmr0 } => {
            let started = std::time::Instant::now();
            let r = cocoon_measurements::reference::measure(
                &cocoon_measurements::reference::Image { dir: image },
                &config,
                &cocoon_measurements::reference::VmShape { vcpus, vcpu_type, memory_bytes: memory, tdx_rtmr0 },
            )?;
            eprintln!("config digest       {}", r.config_digest);
            eprintln!("kernel command line {}", r.cmdline);
            if let Some(t) = &r.tdx {
                eprintln!("TDX MRTD (one pass) {}", t.mrtd[0]);
                eprintln!("TDX MRTD (two pass) {}", t.mrtd[1]);
                eprintln!("TDX RTMR1           {} ({} MiB)", t.rtmr1, t.memory_bytes >> 20);
                eprintln!("TDX RTMR2           {}", t.rtmr2);
                eprintln!("TDX event: CFV      {}", t.events.cfv);
                eprintln!("TDX event: kernel   {}", t.events.kernel_authenticode);
                eprintln!("TDX event: cmdline  {}", t.events.cmdline);
                eprintln!("TDX event: initrd   {}", t.events.initrd);
                if t.rtmr0.is_empty() {
                    eprintln!("TDX RTMR0           not constrained (host ACPI tables; see README, --tdx-rtmr0)");
                }
                for v in &t.rtmr0 {
                    eprintln!("TDX RTMR0 (given)   {v}");
                }
            }
            if let Some(s) = &r.sev_snp {
                eprintln!("SNP measurement     {} ({} x {})", s.measurement, s.vcpus, s.vcpu_type);
            }
            for a in &r.artifacts {
                eprintln!("sha256 {:<16} {} ({} bytes)", a.name, a.sha256, a.bytes);
            }
            eprintln!("computed in {:.2} s", started.elapsed().as_secs_f64());
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Command::MeasureGpu { rims, at } => {
            let at = match &at {
                Some(t) => parse_rfc3339(t)
                    .with_context(|| format!("--at {t:?}: expected RFC 3339, e.g. 2024-01-01T00:00:00Z"))?,
                None => unix_now(),
            };
            let mut sets = Vec::new();
            for path in &rims {
                let bytes = cocoon_attestation::read_limited(path, cocoon_attestation::xml::MAX_DOCUMENT as u64)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                let rim = cocoon_attestation::rim::verify_rim(&bytes, at)
                    .with_context(|| format!("{}: not a valid NVIDIA RIM at {}", path.display(), rfc3339(at)))?;
                eprintln!(
                    "{}: {} {} for {}, {} measurements, signed by {} (valid to {})",
                    path.display(),
                    rim.component,
                    rim.version,
                    rim.product,
                    rim.measurements.len(),
                    rim.signer,
                    rfc3339(rim.signer_valid.1)
                );
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                sets.push(rim.reference_values(&bytes, name, at));
            }
            match sets.as_slice() {
                [one] => println!("{}", serde_json::to_string_pretty(one)?),
                many => println!("{}", serde_json::to_string_pretty(many)?),
            }
        }
        Command::Wallet(cmd) => cocoon_client::channel_cli::run_wallet(cmd).await?,
        Command::Channel(cmd) => cocoon_client::channel_cli::run_channel(cmd).await?,
        Command::Registry(cmd) => cocoon_client::registry_cli::run(cmd).await?,
        Command::Payouts { proxy, dir, claim, min_claim, min_dispute_window, watch, wallet, chain } => {
            let w = cocoon_client::channel_cli::wallet(&wallet)?;
            let dir = match dir {
                Some(d) => d,
                None => cocoon_client::payouts::default_dir()?,
            };
            let chain = cocoon_client::channel_cli::chain(&chain)?;
            let opts = cocoon_client::payouts::Options { claim, min_claim, min_window: min_dispute_window };
            match watch {
                None => cocoon_client::payouts::run(&proxy, &w, &dir, &chain, &opts).await?,
                Some(s) => {
                    let every = std::time::Duration::from_secs(s.max(1));
                    cocoon_client::payouts::watch(&proxy, &w, &dir, &chain, &opts, every).await?
                }
            }
        }
        Command::Key { key } => {
            let k = load_key(key)?;
            println!("{}", hex::encode(k.verifying_key().to_bytes()));
        }
        Command::Serve { proxy, worker, listen, key, max_cost, channel, verifier, registry } => {
            let allowlist = registry.watch().await?;
            let key = load_key(key)?;
            let account = hex::encode(key.verifying_key().to_bytes());
            let policy = verifier.policy()?;
            let runner = match (&proxy, &worker) {
                (Some(p), _) => {
                    let mut runner = Runner::via_proxy(p, policy, verifier.sources(), key, max_cost)
                        .await
                        .with_context(|| format!("verifying the proxy {p}"))?;
                    if let Some(w) = &allowlist {
                        runner = runner.with_registry(w.clone()).with_context(|| format!("the registry and {p}"))?;
                    }
                    match &channel {
                        Some(c) => {
                            let runner = runner.with_channel(c)?;
                            runner.register_channel().await.with_context(|| format!("showing {p} the channel"))?;
                            runner
                        }
                        None => runner,
                    }
                }
                (None, Some(w)) => {
                    let policy = match &allowlist {
                        Some(l) => l.current()?.policy(&policy),
                        None => policy,
                    };
                    let runner = Runner::direct(w, policy, verifier.sources(), key, max_cost)
                        .await
                        .with_context(|| format!("verifying the worker {w}"))?;
                    match &allowlist {
                        Some(l) => runner.with_registry(l.clone()).context("the registry")?,
                        None => runner,
                    }
                }
                (None, None) => bail!("give --proxy URL or --worker URL"),
            };
            if let Some(w) = &allowlist {
                tokio::spawn(w.clone().refresh(|| {}));
            }
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
            eprintln!("cocoon serve: OpenAI-compatible API on http://{listen}/v1 (account {account})");
            cocoon_client::serve::serve(listener, std::sync::Arc::new(runner), cocoon_runtime::shutdown_signal())
                .await?;
        }
        Command::Chat { url, model, prompt, system, max_tokens, temperature, seed, verifier, registry } => {
            let listed = match registry.watch().await? {
                Some(w) => Some(w.current()?),
                None => None,
            };
            let policy = match &listed {
                Some(l) => l.policy(&verifier.policy()?),
                None => verifier.policy()?,
            };
            let worker =
                Worker::attest_with(&url, &policy, &verifier.sources(), true).await.context("verifying the worker")?;
            if let Some(l) = &listed {
                l.check_worker(worker.verified()).context("the registry")?;
            }
            eprintln!("-- verified worker (nothing was sent before this) --");
            print_verified(worker.verified());
            eprintln!("-- answer (sealed end to end, streamed) --");
            let opts = ChatOptions { model, system, max_tokens, temperature, seed };
            let mut stdout = std::io::stdout();
            let outcome = worker
                .chat(&prompt, &opts, |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                })
                .await?;
            println!();
            eprintln!("-- usage --");
            match &outcome.usage {
                Some(u) => eprintln!(
                    "prompt {} + completion {} = {} tokens (finish: {})",
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.total_tokens,
                    outcome.finish_reason.as_deref().unwrap_or("?")
                ),
                None => eprintln!("the worker reported no usage"),
            }
            let r = &outcome.receipt;
            eprintln!("-- receipt (COSE_Sign1, Ed25519, verified under the attested receipt key) --");
            eprintln!(
                "request sha256 {}  model {}  tokens {}+{}  issued {}",
                hex::encode(&r.request_hash),
                r.model_id,
                r.prompt_tokens,
                r.completion_tokens,
                r.issued_at
            );
            if let Some(u) = &outcome.usage
                && (u.prompt_tokens, u.completion_tokens) != (r.prompt_tokens, r.completion_tokens)
            {
                bail!("the receipt's token counts differ from the answer's usage");
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    cocoon_runtime::init_logging("warn");
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
