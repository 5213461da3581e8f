//! `cocoon serve`: the client runner on loopback.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use cocoon_client::serve::Runner;
use cocoon_protocol::{NanoTon, Prices};

use crate::registry::RegistryArgs;
use crate::verifier::VerifierArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
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
    /// Use only workers that charge at most PROMPT,COMPLETION nanoTON per
    /// 1,000 prompt and completion tokens (unless the app sends
    /// x-cocoon-max-price-per-1k): the proxy routes within it, and each
    /// routed worker's attested prices are checked here again.
    #[arg(long, value_name = "PROMPT,COMPLETION")]
    max_price_per_1k: Option<Prices>,
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
}

/// Verifies the proxy (or the worker), then serves apps until a signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let allowlist = args.registry.watch().await?;
    let key = crate::key::load_key(args.key.clone())?;
    let account = hex::encode(key.verifying_key().to_bytes());
    let policy = args.verifier.policy()?;
    let runner = match (&args.proxy, &args.worker) {
        (Some(p), _) => {
            let mut runner = Runner::via_proxy(p, policy, args.verifier.sources(), key, args.max_cost)
                .await
                .with_context(|| format!("verifying the proxy {p}"))?;
            if let Some(w) = &allowlist {
                runner = runner.with_registry(w.clone()).with_context(|| format!("the registry and {p}"))?;
            }
            if let Some(c) = &args.channel {
                runner = runner.with_channel(c)?;
                runner.register_channel().await.with_context(|| format!("showing {p} the channel"))?;
            }
            runner
        }
        (None, Some(w)) => {
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
        (None, None) => anyhow::bail!("give --proxy URL or --worker URL"),
    };
    let runner = runner.with_max_price(args.max_price_per_1k);
    if let Some(w) = &allowlist {
        tokio::spawn(w.clone().refresh(|| {}));
    }
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    eprintln!("cocoon serve: OpenAI-compatible API on http://{listen}/v1 (account {account})");
    cocoon_client::serve::serve(listener, Arc::new(runner), cocoon_runtime::shutdown_signal()).await?;
    Ok(())
}
