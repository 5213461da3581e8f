//! `cocoon serve`: the client runner on loopback.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use cocoon_client::channel_file::{parse_ton, ton};
use cocoon_client::pay::ChannelOpener;
use cocoon_client::serve::Runner;
use cocoon_protocol::{NanoTon, Prices};

use crate::registry::RegistryArgs;
use crate::verifier::VerifierArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A proxy to route through, e.g. http://proxy.example:8090; repeat it to
    /// use several (each request goes to the cheapest and fastest that
    /// answers; the others take over when it fails). With --registry and no
    /// --proxy, every proxy the registry lists.
    #[arg(long, conflicts_with = "worker", required_unless_present_any = ["worker", "registry"])]
    proxy: Vec<String>,
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
    /// Use only workers that charge at most PROMPT,COMPLETION nanoTON per
    /// 1,000 prompt and completion tokens (unless the app sends
    /// x-cocoon-max-price-per-1k): the proxy routes within it, and each
    /// routed worker's attested prices are checked here again.
    #[arg(long, value_name = "PROMPT,COMPLETION")]
    max_price_per_1k: Option<Prices>,
    /// Pay a proxy through this payment channel (a file from `cocoon channel
    /// open`): a voucher for each verified charge. Repeat it for several
    /// proxies; each file pays the proxy whose wallet is its payee. A proxy
    /// without one is paid by its operator's credit to the account.
    #[arg(long, conflicts_with = "worker")]
    channel: Vec<PathBuf>,
    /// Open a channel to each proxy that has none on the first request that
    /// goes to it, from the key's wallet, while what they take stays within
    /// this many TON in all; a proxy the budget leaves without one is not
    /// used. The channels are kept in --channel-dir and used again after a
    /// restart.
    #[arg(long, value_parser = parse_ton, value_name = "TON", conflicts_with = "worker")]
    channel_budget: Option<u64>,
    /// TON deposited into each channel opened (the top-up fee is added).
    #[arg(long, value_parser = parse_ton, value_name = "TON", default_value = "1", requires = "channel_budget")]
    channel_deposit: u64,
    /// Where channels opened are kept (default: `channels/` beside the key).
    #[arg(long, requires = "channel_budget")]
    channel_dir: Option<PathBuf>,
    /// How often proxies not in use are tried again (seconds): those that
    /// could not be verified at start, and those the registry lists since.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    proxy_recheck: u64,
    /// Seconds each proxy has to claim after this runner asks to close a channel it opened.
    #[arg(long, default_value_t = 86_400, requires = "channel_budget")]
    channel_dispute_window: u32,
    /// Evidence of the proxy and of its workers is verified under this policy.
    #[command(flatten)]
    verifier: VerifierArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Verifies the proxy (or the worker), then serves apps until a signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let allowlist = args.registry.watch().await?;
    let key = crate::key::load_key(args.key.clone())?;
    let account = hex::encode(key.verifying_key().to_bytes());
    let policy = args.verifier.policy()?;
    let runner = match &args.worker {
        None => {
            let proxies = match (&args.proxy[..], &allowlist) {
                ([], Some(w)) => {
                    let listed: Vec<String> = w.current()?.proxies.values().map(|p| p.endpoint.clone()).collect();
                    anyhow::ensure!(!listed.is_empty(), "the registry {} lists no proxy", w.registry());
                    listed
                }
                ([], None) => anyhow::bail!("give --proxy URL, --registry ADDR or --worker URL"),
                (given, _) => given.to_vec(),
            };
            let mut runner = Runner::via_proxies(&proxies, policy, args.verifier.sources(), key, args.max_cost)
                .await
                .with_context(|| format!("verifying the proxies {}", proxies.join(", ")))?;
            if let Some(w) = &allowlist {
                runner = runner.with_registry(w.clone()).context("the registry and the proxies")?;
            }
            for c in &args.channel {
                runner = runner.with_channel(c)?;
            }
            if let Some(budget) = args.channel_budget {
                let key_path = crate::key::key_path(args.key.clone())?;
                let dir = match &args.channel_dir {
                    Some(d) => d.clone(),
                    None => key_path.parent().unwrap_or(std::path::Path::new(".")).join("channels"),
                };
                let wallet = cocoon_ton::wallet::Wallet::from_seed(&runner.key.to_bytes())?;
                eprintln!(
                    "cocoon serve: opens a channel of {} TON to each proxy on first use, {} TON in all, from wallet {} \
                     (files in {})",
                    ton(args.channel_deposit),
                    ton(budget),
                    wallet.address(),
                    dir.display()
                );
                let opener = ChannelOpener::new(
                    args.registry.chain()?,
                    wallet,
                    dir,
                    args.channel_deposit,
                    budget,
                    args.channel_dispute_window,
                )?;
                runner = runner.with_channel_opener(opener)?;
            }
            runner.register_channel().await.context("showing the proxies their channels")?;
            for p in runner.proxies() {
                eprintln!(
                    "cocoon serve: proxy {} (commission {} ppm{})",
                    p.url(),
                    p.commission().ppm(),
                    if p.payer().is_some() { ", paid through a channel" } else { "" }
                );
            }
            runner
        }
        Some(w) => {
            let policy = match &allowlist {
                Some(l) => l.current()?.policy(&policy),
                None => policy,
            };
            let runner = Runner::direct(w, policy, args.verifier.sources(), key, args.max_cost)
                .await
                .with_context(|| format!("verifying the worker {w}"))?;
            match &allowlist {
                Some(l) => runner.with_registry(l.clone()).context("the registry")?,
                None => runner,
            }
        }
    };
    let runner = Arc::new(runner.with_max_price(args.max_price_per_1k));
    if let Some(w) = &allowlist {
        tokio::spawn(w.clone().refresh(|| {}));
    }
    if args.worker.is_none() {
        let (given, listed) = (args.proxy.clone(), allowlist.clone());
        let wanted = move || match (&given[..], &listed) {
            ([], Some(w)) => {
                w.current().map(|l| l.proxies.values().map(|p| p.endpoint.clone()).collect()).unwrap_or_default()
            }
            _ => given.clone(),
        };
        tokio::spawn(runner.clone().keep_adopting(wanted, std::time::Duration::from_secs(args.proxy_recheck)));
    }
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    eprintln!("cocoon serve: OpenAI-compatible API on http://{listen}/v1 (account {account})");
    cocoon_client::serve::serve(listener, runner, cocoon_runtime::shutdown_signal()).await?;
    Ok(())
}
