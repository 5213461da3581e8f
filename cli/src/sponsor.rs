//! `cocoon sponsor`: the app's server signs the charge authorisations of its
//! Telegram users' sealed requests, within per-user quotas, without seeing
//! them (see `cocoon_client::sponsor`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use cocoon_client::channel_file::{parse_ton, ton};
use cocoon_client::sponsor::{QuotaBook, Sponsor, SponsorPolicy};
use cocoon_protocol::NanoTon;

#[derive(Debug, Args)]
pub struct SponsorArgs {
    /// The app's account key: the account the proxy charges (created with mode 0600 when missing).
    #[arg(long, env = "COCOON_CLIENT_KEY")]
    key: Option<PathBuf>,
    /// A file (mode 0600) holding the bot's token, which signs its users' init data.
    #[arg(long, env = "COCOON_BOT_TOKEN_FILE")]
    bot_token_file: PathBuf,
    /// Where browsers reach the sponsor.
    #[arg(long, default_value = "127.0.0.1:8010")]
    listen: std::net::SocketAddr,
    /// The quota book (SQLite): signatures given and what each user spent.
    #[arg(long, default_value = "sponsor.sqlite")]
    db: PathBuf,
    /// What one user may be authorised for per period, in all (TON).
    #[arg(long, value_parser = parse_ton, value_name = "TON")]
    quota: u64,
    /// The quota's period in seconds (quotas renew at multiples of it).
    #[arg(long, default_value_t = 86_400)]
    period: u64,
    /// The most one request may be authorised for (TON).
    #[arg(long, value_parser = parse_ton, value_name = "TON", default_value = "0.1")]
    max_cost: u64,
    /// Init data older than this many seconds is refused.
    #[arg(long, default_value_t = 86_400)]
    max_age: u64,
    /// A model users may ask for (repeat it); none given allows any.
    #[arg(long)]
    model: Vec<String>,
}

/// Serves `POST /v1/sponsor` until a signal.
pub async fn run(args: SponsorArgs) -> anyhow::Result<()> {
    let key = crate::key::load_key(args.key.clone())?;
    cocoon_client::keyfile::check_private(&args.bot_token_file)?;
    let token = cocoon_attestation::read_limited(&args.bot_token_file, 1024)
        .map_err(|e| anyhow::anyhow!("bot token {}: {e}", args.bot_token_file.display()))?;
    let bot_token = String::from_utf8(token).context("the bot token is not UTF-8")?.trim().to_string();
    anyhow::ensure!(!bot_token.is_empty(), "the bot token file {} is empty", args.bot_token_file.display());
    let policy = SponsorPolicy {
        bot_token,
        max_age_s: args.max_age,
        quota: NanoTon(args.quota),
        period_s: args.period,
        max_cost: NanoTon(args.max_cost),
        models: args.model.clone(),
    };
    let book = QuotaBook::open(&args.db)?;
    let sponsor = Arc::new(Sponsor::new(key, policy, book)?);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "cocoon sponsor: POST http://{}/v1/sponsor; account {} pays up to {} TON per user every {} s, {} TON per request",
        args.listen,
        hex::encode(sponsor.account()),
        ton(args.quota),
        args.period,
        ton(args.max_cost)
    );
    cocoon_client::sponsor::serve(listener, sponsor, cocoon_runtime::shutdown_signal()).await?;
    Ok(())
}
