//! The `cocoon-proxy` command line: `serve`, `ledger`, `deposit`, `settle`, `wallet`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use cocoon_attestation::detect::{TeePaths, hardware_producer};
use cocoon_attestation::simulated::SimulatedProducer;
use cocoon_attestation::{EvidenceProducer, Policy, ReferenceValues};
use cocoon_client::EndorsementSources;
use cocoon_protocol::{NanoTon, Platform};

use crate::app::App;
use crate::config::ProxyConfig;
use crate::identity::Identity;
use crate::ledger::Ledger;
use crate::registry::Registry;
use crate::server::serve;

#[derive(Debug, Parser)]
#[command(
    name = "cocoon-proxy",
    version,
    about = "Routes sealed requests to attested workers and meters their receipts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Print client balances, worker earnings and totals from the ledger.
    Ledger {
        #[arg(long, default_value = crate::config::DEFAULT_LEDGER)]
        db: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Also list every charge (request hash, worker, tokens, amounts).
        #[arg(long)]
        charges: bool,
    },
    /// Claim clients' channels on chain now (`[ton]`): those owing at least
    /// the settle threshold, or every one that owes anything with --all.
    Settle {
        #[arg(long, env = "COCOON_PROXY_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        all: bool,
    },
    /// Print the proxy's TON wallet (of its account key): fund it to pay workers.
    Wallet {
        #[arg(long, env = "COCOON_PROXY_CONFIG")]
        config: PathBuf,
    },
    /// Credit a client's account by hand (clients with a channel pay with vouchers instead).
    Deposit {
        #[arg(long, default_value = crate::config::DEFAULT_LEDGER)]
        db: PathBuf,
        /// The client's account key (hex Ed25519 public key, as `cocoon key` prints it).
        #[arg(long)]
        client: String,
        /// nanoTON to credit.
        #[arg(long)]
        amount: NanoTon,
        /// A note kept with the deposit (a payment reference).
        #[arg(long)]
        reference: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The config file (TOML); flags below override it.
    #[arg(long, env = "COCOON_PROXY_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[arg(long)]
    ledger: Option<PathBuf>,
    #[arg(long)]
    account_key: Option<PathBuf>,
    /// A worker to admit and keep admitted (repeatable; adds to the config's list).
    #[arg(long = "worker", value_name = "URL")]
    workers: Vec<String>,
    #[arg(long)]
    commission_ppm: Option<u64>,
    #[arg(long)]
    credit_limit: Option<NanoTon>,
    /// Seconds between re-attestations of each worker.
    #[arg(long)]
    reattest_interval: Option<f64>,
    /// The attestation policy workers must pass (TOML or JSON).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Reference values workers' measurements must match (repeatable).
    #[arg(long = "reference-values", value_name = "FILE")]
    reference_values: Vec<PathBuf>,
    /// The proxy's own evidence: auto, tdx, sev-snp, or simulated.
    #[arg(long)]
    platform: Option<String>,
    /// DEVELOPMENT ONLY: admit workers with simulated evidence, and allow --platform simulated.
    #[arg(long)]
    insecure_simulated: bool,
    /// Seconds in-flight streams get to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = cocoon_runtime::DEFAULT_GRACE_S as f64)]
    grace: f64,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ProxyConfig> {
        let mut c = match &self.config {
            Some(p) => ProxyConfig::from_file(p)?,
            None => ProxyConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.ledger {
            c.ledger = v.clone();
        }
        if let Some(v) = &self.account_key {
            c.account_key = v.clone();
        }
        c.workers.extend(self.workers.iter().cloned());
        if let Some(v) = self.commission_ppm {
            c.commission_ppm = v;
        }
        if let Some(v) = self.credit_limit {
            c.credit_limit = v;
        }
        if let Some(v) = self.reattest_interval {
            c.reattest_interval_s = v;
        }
        if let Some(v) = &self.policy {
            c.policy = Some(v.clone());
        }
        c.reference_values.extend(self.reference_values.iter().cloned());
        if let Some(v) = &self.platform {
            c.platform = v.clone();
        }
        c.insecure_simulated |= self.insecure_simulated;
        Ok(c)
    }
}

fn policy(c: &ProxyConfig) -> anyhow::Result<Policy> {
    let mut p = match &c.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default(),
    };
    for f in &c.reference_values {
        p.reference_values.push(ReferenceValues::from_file(f)?);
    }
    if c.insecure_simulated {
        eprintln!(
            "WARNING: --insecure-simulated: workers with simulated evidence will be admitted; \
             their evidence proves nothing."
        );
        p.allow_simulated = true;
        p.development = true;
    }
    Ok(p)
}

fn producer(c: &ProxyConfig) -> anyhow::Result<Arc<dyn EvidenceProducer>> {
    let want = match c.platform.as_str() {
        "auto" => None,
        "simulated" if c.insecure_simulated => {
            eprintln!("WARNING: SIMULATED EVIDENCE for the proxy itself: it proves nothing about this machine.");
            return Ok(Arc::new(SimulatedProducer::new()));
        }
        "simulated" => bail!("--platform simulated needs the explicit --insecure-simulated flag"),
        other => Some(other.parse::<Platform>().map_err(|e| anyhow::anyhow!("--platform: {e}"))?),
    };
    hardware_producer(want, &TeePaths::default()).map_err(|e| {
        anyhow::anyhow!(
            "{e}; refusing to fall back to simulated evidence (for development: --platform simulated --insecure-simulated)"
        )
    })
}

pub fn main() -> anyhow::Result<()> {
    cocoon_runtime::init_logging("info");
    match Cli::parse().command {
        Command::Serve(args) => run(args),
        Command::Ledger { db, json, charges } => print_ledger(&db, json, charges),
        Command::Settle { config, all } => settle(&config, all),
        Command::Wallet { config } => {
            let config = ProxyConfig::from_file(&config)?;
            let key = cocoon_client::keyfile::load(&config.account_key)?;
            let address = cocoon_ton::wallet::address_of(&key.verifying_key().to_bytes())?;
            println!("{address}\nraw: {}", address.to_hex());
            Ok(())
        }
        Command::Deposit { db, client, amount, reference } => {
            let key: [u8; 32] = hex::decode(&client)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("--client {client:?}: expected 64 hex digits (an Ed25519 public key)"))?;
            let ledger = Ledger::open(&db)?;
            ledger.deposit(&key, amount, reference.as_deref())?;
            let a = ledger.account(&key)?;
            println!("deposited {amount} to {client}; balance {} nanoTON", a.balance());
            Ok(())
        }
    }
}

fn settle(config: &std::path::Path, all: bool) -> anyhow::Result<()> {
    let config = ProxyConfig::from_file(config)?;
    let ton = config.ton.clone().context("the config has no [ton] section")?;
    let key = cocoon_client::keyfile::load(&config.account_key)?;
    let ledger = Arc::new(Ledger::open(&config.ledger)?);
    let min = if all { 0 } else { ton.settle_threshold.0 };
    let payments = crate::payments::Payments::new(ton, &key, ledger)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = rt.block_on(payments.settle_all(min));
    let mut failed = 0;
    for (channel, r) in &results {
        match r {
            Ok(paid) => println!("{channel}: claimed {paid} nanoTON"),
            Err(e) => {
                failed += 1;
                println!("{channel}: {e}");
            }
        }
    }
    if results.is_empty() {
        println!("no channel owes {} nanoTON or more", min.max(1));
    }
    if failed > 0 {
        bail!("{failed} of {} settlements failed", results.len());
    }
    Ok(())
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let commission = config.validate()?;
    let policy = policy(&config)?;
    let producer = producer(&config)?;
    let (key, created) = cocoon_client::keyfile::load_or_create(&config.account_key)?;
    if created {
        tracing::info!(path = %config.account_key.display(), "created a new account key");
    }
    let identity = Identity::new(key, commission, config.credit_limit, producer).context("the proxy's own evidence")?;
    let ledger = Arc::new(Ledger::open(&config.ledger)?);
    cocoon_runtime::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let sources = EndorsementSources { gpu_revocation: config.gpu_revocation.clone(), ..Default::default() };
        let allowlist = match config.ton.as_ref().map(|t| (t, t.registry_address())) {
            Some((ton, Ok(Some(address)))) => {
                let chain = cocoon_ton::toncenter::Toncenter::new(&ton.api, ton.api_key.clone())?;
                let every = Duration::from_secs_f64(ton.registry_refresh_s);
                let watched = cocoon_client::allowlist::Watched::start(chain, address, every)
                    .await
                    .context("reading the registry (ton.registry)")?;
                Some(watched)
            }
            Some((_, Err(e))) => return Err(e),
            _ => None,
        };
        let registry = Registry::new(config.clone(), policy, sources, ledger.clone(), allowlist.clone());
        if let Some(watched) = allowlist {
            let r = registry.clone();
            tokio::spawn(watched.refresh(move || r.recheck_all("the registry changed")));
        }
        let payments = match &config.ton {
            Some(ton) => {
                let p = crate::payments::Payments::new(ton.clone(), &identity.key, ledger.clone())?;
                tracing::info!(wallet = %p.wallet_address(), api = %ton.api, "payments on TON");
                tokio::spawn(p.clone().watch());
                Some(p)
            }
            None => None,
        };
        let app = App::new(
            registry.clone(),
            ledger,
            identity,
            commission,
            config.credit_limit,
            config.limits.clone(),
            payments,
        );
        tokio::spawn(registry.maintain());
        tracing::info!(
            listen = %config.listen,
            account = %app.identity.terms.account_key,
            commission_ppm = commission.ppm(),
            ledger = %config.ledger.display(),
            "proxy ready"
        );
        serve(listener, app, shutdown_signal(), Duration::from_secs_f64(args.grace.max(0.0))).await
    })
}

async fn shutdown_signal() {
    cocoon_runtime::shutdown_signal().await;
    tracing::info!("shutting down: no new connections; letting streams in flight finish");
}

fn print_ledger(db: &std::path::Path, json: bool, with_charges: bool) -> anyhow::Result<()> {
    if !db.exists() {
        bail!("no ledger at {} (--db)", db.display());
    }
    let ledger = Ledger::open(db)?;
    let totals = ledger.totals()?;
    let accounts = ledger.accounts()?;
    let workers = ledger.worker_credits()?;
    let charges: Vec<serde_json::Value> = if with_charges {
        ledger
            .charges()?
            .iter()
            .map(|c| {
                serde_json::json!({
                    "request_hash": hex::encode(c.request_hash),
                    "client_key": hex::encode(c.client_key),
                    "worker_url": c.worker_url,
                    "model": c.model_id,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "worker_cost": c.worker_cost,
                    "commission": c.commission,
                    "charge": c.charge,
                    "created_at": c.created_at,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    if json {
        let channels = ledger.client_channels()?;
        let mut v =
            serde_json::json!({"totals": totals, "accounts": accounts, "workers": workers, "channels": channels});
        if with_charges {
            v["charges"] = serde_json::Value::Array(charges);
        }
        println!("{v}");
        return Ok(());
    }
    if with_charges {
        println!("charges");
        for c in &charges {
            println!(
                "  {}  {:<28}  {:>6}+{:<6} tokens  {:>12} = {} + {}",
                c["request_hash"].as_str().unwrap_or(""),
                c["worker_url"].as_str().unwrap_or(""),
                c["prompt_tokens"],
                c["completion_tokens"],
                c["charge"],
                c["worker_cost"],
                c["commission"]
            );
        }
    }
    println!("clients");
    println!("  {:<64}  {:>16}  {:>16}  {:>16}", "account key", "deposited", "charged", "balance");
    for a in &accounts {
        println!("  {:<64}  {:>16}  {:>16}  {:>16}", a.client_key, a.deposited.0, a.charged.0, a.balance);
    }
    println!("workers");
    println!("  {:<40}  {:<20}  {:>10}  {:>16}", "url", "payout address", "requests", "earned");
    for w in &workers {
        println!(
            "  {:<40}  {:<20}  {:>10}  {:>16}",
            w.worker_url,
            w.payout_address.as_deref().unwrap_or("-"),
            w.requests,
            w.earned.0
        );
    }
    println!("totals (nanoTON)");
    println!("  deposits          {:>16}", totals.deposits.0);
    println!("  charged           {:>16}  ({} requests)", totals.charged.0, totals.charges);
    println!("  worker earnings   {:>16}", totals.worker_earnings.0);
    println!("  commission        {:>16}", totals.commission.0);
    println!("  tokens            {:>16} prompt, {} completion", totals.prompt_tokens, totals.completion_tokens);
    Ok(())
}
