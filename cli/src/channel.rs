//! `cocoon wallet` and `cocoon channel`: a payer opens, funds and closes a
//! payment channel and signs vouchers; a payee claims them. Chain access is
//! the TON HTTP API (toncenter v2); keys come from a 0600 seed file (the same
//! file as the client's account key by default) or a TON mnemonic file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use cocoon_client::channel_file::{load_channel, open_channel, parse_ton, ton};
use cocoon_ton::actions;
use cocoon_ton::channel::{SignedVoucher, Voucher};
use cocoon_ton::toncenter::Toncenter;
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{TonAddress, TonError};

#[derive(Debug, Args)]
pub struct ChainArgs {
    /// The TON HTTP API (toncenter v2) root.
    #[arg(long = "ton-api", env = "COCOON_TON_API", default_value = "https://toncenter.com/api/v2")]
    pub api: String,
    /// toncenter API key, if you have one (raises its rate limit).
    #[arg(long, env = "TONCENTER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct WalletArgs {
    /// Ed25519 seed file (64 hex digits, mode 0600); the wallet is a v4R2 wallet of its key.
    #[arg(long, env = "COCOON_CLIENT_KEY", conflicts_with = "mnemonic")]
    pub key: Option<PathBuf>,
    /// A file (mode 0600) holding a 24-word TON mnemonic instead.
    #[arg(long, env = "COCOON_TON_MNEMONIC_FILE")]
    pub mnemonic: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Print the wallet's address and, with the chain reachable, its balance.
    Address {
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
        /// Do not ask the chain for the balance.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Deploy a channel from this wallet to a payee and deposit into it; writes the channel file.
    Open {
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
        /// The payee's wallet address (raw 0:<hex> or user-friendly).
        #[arg(long)]
        payee: String,
        /// TON to deposit (e.g. 10 or 2.5); the 0.01 TON top-up fee is added.
        #[arg(long, value_parser = parse_ton)]
        amount: u64,
        /// Distinguishes channels to the same payee; never reuse one. Default: a
        /// random one, so that a channel opened again is a new address.
        #[arg(long)]
        channel_id: Option<u64>,
        /// Seconds the payee has to claim after you ask to close.
        #[arg(long, default_value_t = 86_400)]
        dispute_window: u32,
        /// Where to write the channel file.
        #[arg(long, default_value = "channel.json")]
        out: PathBuf,
    },
    /// Deposit more into an open channel.
    TopUp {
        channel: PathBuf,
        #[arg(long, value_parser = parse_ton)]
        amount: u64,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Show the channel's state on chain.
    Status {
        channel: PathBuf,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Sign a cumulative voucher: the total (nanoTON) owed to the payee so far.
    Voucher {
        channel: PathBuf,
        #[arg(long)]
        total: u64,
        #[command(flatten)]
        wallet: WalletArgs,
    },
    /// Payee: claim a voucher (JSON file) on chain.
    Claim {
        channel: PathBuf,
        voucher: PathBuf,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Payer: start the dispute window.
    Close {
        channel: PathBuf,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Payer: take back what is left once the window has passed.
    Finalize {
        channel: PathBuf,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

pub(crate) fn parse_address(text: &str) -> anyhow::Result<TonAddress> {
    Ok(cocoon_ton::channel::parse_address("address", text)?)
}

pub fn wallet(args: &WalletArgs) -> anyhow::Result<Wallet> {
    if let Some(path) = &args.mnemonic {
        cocoon_client::keyfile::check_private(path)?;
        let words =
            cocoon_attestation::read_limited(path, 4096).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(Wallet::from_mnemonic(std::str::from_utf8(&words).context("mnemonic file is not UTF-8")?)?);
    }
    let path = crate::key::key_path(args.key.clone())?;
    let key = cocoon_client::keyfile::load(&path)?;
    Ok(Wallet::from_seed(&key.to_bytes())?)
}

pub fn chain(args: &ChainArgs) -> anyhow::Result<Toncenter> {
    Ok(Toncenter::new(&args.api, args.api_key.clone())?)
}

pub async fn run_wallet(cmd: WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::Address { wallet: w, chain: c, offline } => {
            let w = wallet(&w)?;
            println!("{}", w.address());
            println!("raw: {}", w.address().to_hex());
            if !offline {
                let account = chain(&c)?.account(w.address()).await?;
                println!("balance: {} TON ({})", ton(account.balance), account.state);
            }
        }
    }
    Ok(())
}

pub async fn run_channel(cmd: ChannelCommand) -> anyhow::Result<()> {
    match cmd {
        ChannelCommand::Open { wallet: w, chain: c, payee, amount, channel_id, dispute_window, out } => {
            let w = wallet(&w)?;
            if out.exists() {
                bail!("{} exists already; give --out for a new channel file", out.display());
            }
            eprintln!("opening a channel (file {}): deploying and depositing {} TON...", out.display(), ton(amount));
            let state =
                open_channel(&chain(&c)?, &w, parse_address(&payee)?, amount, channel_id, dispute_window, &out).await?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        ChannelCommand::TopUp { channel, amount, wallet: w, chain: c } => {
            let (params, _) = load_channel(&channel)?;
            let state = actions::top_up(&chain(&c)?, &wallet(&w)?, &params, amount).await?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        ChannelCommand::Status { channel, chain: c } => {
            let (params, _) = load_channel(&channel)?;
            match actions::channel_state(&chain(&c)?, &params).await? {
                Some(state) => println!("{}", serde_json::to_string_pretty(&state)?),
                None => println!("channel {} is not deployed", params.address()?),
            }
        }
        ChannelCommand::Voucher { channel, total, wallet: w } => {
            let (params, descriptor) = load_channel(&channel)?;
            let w = wallet(&w)?;
            if w.signing_key().verifying_key().to_bytes() != params.payer_key {
                bail!("this key is not the channel's payer key {}", hex::encode(params.payer_key));
            }
            let binding = descriptor.binding()?;
            let signed = Voucher { channel: params.address()?, binding, total }.sign(w.signing_key())?;
            println!("{}", serde_json::to_string_pretty(&signed)?);
        }
        ChannelCommand::Claim { channel, voucher, wallet: w, chain: c } => {
            let (params, _) = load_channel(&channel)?;
            let text = cocoon_attestation::read_limited(&voucher, 64 * 1024)
                .map_err(|e| anyhow::anyhow!("voucher {}: {e}", voucher.display()))?;
            let signed: SignedVoucher =
                serde_json::from_slice(&text).with_context(|| format!("voucher {}", voucher.display()))?;
            let paid = actions::claim(&chain(&c)?, &wallet(&w)?, &params, &signed).await.map_err(explain)?;
            println!("claimed {} TON", ton(paid));
        }
        ChannelCommand::Close { channel, wallet: w, chain: c } => {
            let (params, _) = load_channel(&channel)?;
            let state = actions::request_close(&chain(&c)?, &wallet(&w)?, &params).await?;
            println!(
                "closing since {}; finalize after {} (unix time)",
                state.closing_since,
                u64::from(state.closing_since) + u64::from(state.dispute_window)
            );
        }
        ChannelCommand::Finalize { channel, wallet: w, chain: c } => {
            let (params, _) = load_channel(&channel)?;
            let chain = chain(&c)?;
            let now = chain.account(&params.address()?).await?.chain_time.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
            });
            let state = actions::finalize(&chain, &wallet(&w)?, &params, now).await?;
            println!("closed; {} TON claimed by the payee in all, the rest returned", ton(state.claimed));
        }
    }
    Ok(())
}

fn explain(e: cocoon_ton::toncenter::ChainError) -> anyhow::Error {
    match e {
        cocoon_ton::toncenter::ChainError::Ton(TonError::BadSignature) => {
            anyhow::anyhow!("the voucher's signature is not the channel's payer's; nothing was sent")
        }
        other => other.into(),
    }
}
