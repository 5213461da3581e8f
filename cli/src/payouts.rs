//! `cocoon payouts`: a worker's pay, fetched from proxies, kept and claimed.

use std::path::PathBuf;

use clap::Args;
use cocoon_client::payouts;

use crate::channel::{ChainArgs, WalletArgs, chain, wallet};

#[derive(Debug, Args)]
pub struct PayoutsArgs {
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
    #[arg(long, default_value_t = payouts::DEFAULT_MIN_DISPUTE_WINDOW)]
    min_dispute_window: u32,
    /// Keep running: fetch, check and claim every SECONDS (a close request
    /// is answered with a claim within one interval).
    #[arg(long, value_name = "SECONDS")]
    watch: Option<u64>,
    #[command(flatten)]
    wallet: WalletArgs,
    #[command(flatten)]
    chain: ChainArgs,
}

pub async fn run(args: PayoutsArgs) -> anyhow::Result<()> {
    let w = wallet(&args.wallet)?;
    let dir = match args.dir {
        Some(d) => d,
        None => payouts::default_dir()?,
    };
    let chain = chain(&args.chain)?;
    let opts = payouts::Options { claim: args.claim, min_claim: args.min_claim, min_window: args.min_dispute_window };
    match args.watch {
        None => payouts::run(&args.proxy, &w, &dir, &chain, &opts).await?,
        Some(s) => {
            let every = std::time::Duration::from_secs(s.max(1));
            payouts::watch(&args.proxy, &w, &dir, &chain, &opts, every).await?
        }
    }
    Ok(())
}
