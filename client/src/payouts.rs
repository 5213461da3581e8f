//! `cocoon payouts`: a worker's vouchers from its proxy, kept durably and
//! claimed on chain.
//!
//! The proxy signs, on request, a cumulative voucher for everything the
//! worker's payout address has earned (`GET /v1/payouts?payee=`). This tool
//! checks it (the channel pays this wallet, the proxy's account key signed
//! it), keeps the newest one per channel in a file written atomically and
//! synced before anything else happens, and claims it on chain when asked.
//! The stored vouchers are the worker's money: no rollback of the proxy's
//! database takes them back, and they are claimable without the proxy.
//!
//! A voucher is only as good as the time left to claim it: once the payer
//! (the proxy) asks to close, the worker has the channel's dispute window to
//! claim, after which the rest returns to the payer. So a voucher on a
//! channel whose window is shorter than `--min-dispute-window` is refused
//! before it is stored, and every pass claims at once, whatever `--min-claim`
//! says, everything vouched on a channel whose close was requested.
//! `--watch` makes the passes continuous, well within the window.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cocoon_ton::channel::{ChannelDescriptor, SignedVoucher};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{TonAddress, actions};
use serde::{Deserialize, Serialize};

use crate::http::HttpClient;

/// A voucher as the proxy hands it out and as it is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldVoucher {
    pub channel: ChannelDescriptor,
    pub voucher: SignedVoucher,
}

/// The shortest dispute window a payee accepts by default: time enough to
/// notice a close request and get a claim on chain, with retries.
pub const DEFAULT_MIN_DISPUTE_WINDOW: u32 = 3600;

/// Checks that `held` pays `me`, on a funded channel whose dispute window is
/// at least `min_window` seconds, and is signed by the channel's payer (and,
/// when known, that the payer is the proxy's account key).
pub fn check(held: &HeldVoucher, me: &TonAddress, proxy_key: Option<&[u8; 32]>, min_window: u32) -> anyhow::Result<()> {
    let params = held.channel.params()?;
    if &params.payee != me {
        bail!("the voucher's channel pays {}, not this wallet {}", params.payee, me);
    }
    if params.dispute_window < min_window {
        bail!(
            "channel {} gives {} s to claim after a close request; this payee needs at least {min_window} s \
             (--min-dispute-window): the payer could close and take the vouched money back before a claim lands",
            held.channel.address,
            params.dispute_window
        );
    }
    if let Some(k) = proxy_key
        && &params.payer_key != k
    {
        bail!(
            "the channel's payer key {} is not the proxy's account key {}",
            hex::encode(params.payer_key),
            hex::encode(k)
        );
    }
    held.voucher.verify(&params.address()?, &held.channel.binding()?, &params.payer_key)?;
    Ok(())
}

/// Stores `held` unless a voucher with an equal or larger total is stored for
/// its channel already; returns whether it was stored.
pub fn store(dir: &Path, held: &HeldVoucher) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = held.channel.address.replace(':', "_");
    let path = dir.join(format!("{name}.json"));
    if let Some(old) = read(&path)?
        && old.voucher.total >= held.voucher.total
    {
        return Ok(false);
    }
    crate::durable::write(&path, &serde_json::to_vec_pretty(held)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

fn read(path: &Path) -> anyhow::Result<Option<HeldVoucher>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        Ok(_) => {
            let bytes = cocoon_attestation::read_limited(path, 64 * 1024)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?))
        }
    }
}

/// Every voucher stored in `dir`.
pub fn held(dir: &Path) -> anyhow::Result<Vec<HeldVoucher>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        other => other.with_context(|| format!("{}", dir.display()))?,
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") && !name.starts_with('.') {
            out.extend(read(&path)?);
        }
    }
    out.sort_by(|a, b| a.channel.address.cmp(&b.channel.address));
    Ok(out)
}

/// Fetches the proxy's newest voucher for `wallet`'s address, checks it and stores it.
pub async fn fetch(proxy: &str, wallet: &Wallet, dir: &Path, min_window: u32) -> anyhow::Result<Option<HeldVoucher>> {
    let http = HttpClient::default();
    let base = proxy.trim_end_matches('/');
    let terms_url = format!("{base}/v1/terms").parse().context("proxy URL")?;
    let (status, terms) = http.get(terms_url, 16 << 10).await.map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
    if !status.is_success() {
        bail!("{base}/v1/terms answered {status}");
    }
    let terms: cocoon_protocol::price::ProxyTerms = serde_json::from_slice(&terms).context("the proxy's terms")?;
    let proxy_key: [u8; 32] = hex::decode(&terms.account_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .context("the proxy's terms: account_key is not 64 hex digits")?;
    let url = format!("{base}/v1/payouts?payee={}", wallet.address().to_hex()).parse().context("proxy URL")?;
    let (status, body) = http.get(url, 64 << 10).await.map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
    if status.as_u16() == 404 {
        return Ok(None);
    }
    if !status.is_success() {
        bail!(
            "{base}/v1/payouts answered {status}: {}",
            String::from_utf8_lossy(&body).chars().take(300).collect::<String>()
        );
    }
    let held: HeldVoucher = serde_json::from_slice(&body).context("the proxy's voucher")?;
    check(&held, wallet.address(), Some(&proxy_key), min_window)?;
    store(dir, &held)?;
    Ok(Some(held))
}

pub fn default_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: give --dir")?;
    Ok(PathBuf::from(home).join(".local/share/cocoon/payouts"))
}

/// What a pass fetches, checks and claims.
#[derive(Debug, Clone)]
pub struct Options {
    /// Claim every voucher that pays more than `min_claim`.
    pub claim: bool,
    pub min_claim: u64,
    /// Shortest dispute window accepted (seconds).
    pub min_window: u32,
}

/// One voucher's standing after a pass.
struct Row {
    channel: String,
    total: u64,
    claimed: u64,
    claimable: u64,
    /// Claimed in this pass.
    paid: Option<u64>,
    /// Why it could not be read or claimed.
    problem: Option<String>,
}

/// Fetches from every proxy, then claims what is due: everything vouched on a
/// channel whose payer asked to close (whatever `min_claim` says), and, with
/// `claim`, what pays more than `min_claim`. A failure on one channel does not
/// stop the others.
async fn pass(
    proxies: &[String],
    wallet: &Wallet,
    dir: &Path,
    chain: &cocoon_ton::toncenter::Toncenter,
    opts: &Options,
    quiet: bool,
) -> anyhow::Result<Vec<Row>> {
    for p in proxies {
        match fetch(p, wallet, dir, opts.min_window).await {
            Ok(Some(h)) if !quiet => eprintln!(
                "{p}: voucher for {} TON in all on channel {}",
                crate::channel_file::ton(h.voucher.total),
                h.channel.address
            ),
            Ok(Some(_)) => {}
            Ok(None) if !quiet => eprintln!("{p}: nothing earned yet"),
            Ok(None) => {}
            Err(e) => eprintln!("{p}: {e:#}"),
        }
    }
    let mut rows = Vec::new();
    for h in held(dir)? {
        let mut row = Row {
            channel: h.channel.address.clone(),
            total: h.voucher.total,
            claimed: 0,
            claimable: 0,
            paid: None,
            problem: None,
        };
        if let Err(e) = settle_one(&h, wallet, chain, opts, &mut row).await {
            row.problem = Some(format!("{e:#}"));
        }
        rows.push(row);
    }
    Ok(rows)
}

async fn settle_one(
    h: &HeldVoucher,
    wallet: &Wallet,
    chain: &cocoon_ton::toncenter::Toncenter,
    opts: &Options,
    row: &mut Row,
) -> anyhow::Result<()> {
    check(h, wallet.address(), None, opts.min_window)?;
    let params = h.channel.params()?;
    let Some(state) = actions::channel_state(chain, &params).await? else {
        bail!("channel {} is not on chain (was it deleted?): its vouchers cannot be claimed", h.channel.address);
    };
    if state.binding() != h.channel.binding()? {
        bail!(
            "channel {} on chain is network {} instance {}, the voucher names network {} instance {}: not claimable here",
            h.channel.address,
            state.global_id,
            state.instance,
            h.voucher.global_id,
            h.voucher.instance
        );
    }
    row.claimed = state.claimed;
    row.claimable = state.claimable(h.voucher.total).unwrap_or(0);
    let closing = state.closing_since != 0 && !state.closed;
    if row.claimable > 0 && (closing || (opts.claim && row.claimable > opts.min_claim)) {
        if closing {
            eprintln!(
                "channel {}: the payer asked to close at {}; claiming {} TON now (the window ends at {})",
                h.channel.address,
                state.closing_since,
                crate::channel_file::ton(row.claimable),
                u64::from(state.closing_since) + u64::from(state.dispute_window)
            );
        }
        let paid = actions::claim(chain, wallet, &params, &h.voucher).await?;
        row.paid = Some(paid);
        row.claimed += paid;
        row.claimable = 0;
    }
    Ok(())
}

/// Lists what is held and claims what is due (see [`Options`]), once.
pub async fn run(
    proxies: &[String],
    wallet: &Wallet,
    dir: &Path,
    chain: &cocoon_ton::toncenter::Toncenter,
    opts: &Options,
) -> anyhow::Result<()> {
    let rows = pass(proxies, wallet, dir, chain, opts, false).await?;
    println!("{:<68} {:>16} {:>16} {:>16}", "channel", "voucher, TON", "claimed, TON", "claimable, TON");
    let t = crate::channel_file::ton;
    let mut problems = 0;
    for r in &rows {
        println!("{:<68} {:>16} {:>16} {:>16}", r.channel, t(r.total), t(r.claimed), t(r.claimable));
        if let Some(paid) = r.paid {
            println!("claimed {} TON on {}", t(paid), r.channel);
        }
        if let Some(p) = &r.problem {
            eprintln!("{}: {p}", r.channel);
            problems += 1;
        }
    }
    if problems > 0 {
        bail!("{problems} of {} channels could not be read or claimed (see above)", rows.len());
    }
    Ok(())
}

/// [`run`] every `every`, forever: new vouchers are fetched and stored as they
/// are earned, and a close request is answered with a claim within one
/// interval. Failures are reported and retried at the next pass.
pub async fn watch(
    proxies: &[String],
    wallet: &Wallet,
    dir: &Path,
    chain: &cocoon_ton::toncenter::Toncenter,
    opts: &Options,
    every: std::time::Duration,
) -> anyhow::Result<()> {
    if every.as_secs() * 4 > u64::from(opts.min_window) {
        bail!(
            "--watch every {} s is too slow for a dispute window of {} s: pass at least four times per window",
            every.as_secs(),
            opts.min_window
        );
    }
    eprintln!("watching every {} s (claims on a close request at once)", every.as_secs());
    loop {
        match pass(proxies, wallet, dir, chain, opts, true).await {
            Ok(rows) => {
                for r in rows {
                    if let Some(paid) = r.paid {
                        println!("claimed {} TON on {}", crate::channel_file::ton(paid), r.channel);
                    }
                    if let Some(p) = r.problem {
                        eprintln!("{}: {p}", r.channel);
                    }
                }
            }
            Err(e) => eprintln!("watching: {e:#}"),
        }
        tokio::time::sleep(every).await;
    }
}
