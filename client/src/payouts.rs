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

/// Checks that `held` pays `me` and is signed by the channel's payer (and, when
/// known, that the payer is the proxy's account key).
pub fn check(held: &HeldVoucher, me: &TonAddress, proxy_key: Option<&[u8; 32]>) -> anyhow::Result<()> {
    let params = held.channel.params()?;
    if &params.payee != me {
        bail!("the voucher's channel pays {}, not this wallet {}", params.payee, me);
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
    held.voucher.verify(&params.address()?, &params.payer_key)?;
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
pub async fn fetch(proxy: &str, wallet: &Wallet, dir: &Path) -> anyhow::Result<Option<HeldVoucher>> {
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
    check(&held, wallet.address(), Some(&proxy_key))?;
    store(dir, &held)?;
    Ok(Some(held))
}

pub fn default_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: give --dir")?;
    Ok(PathBuf::from(home).join(".local/share/cocoon/payouts"))
}

/// Lists what is held and, with `claim`, claims every voucher that pays more than `min_claim`.
pub async fn run(
    proxies: &[String],
    wallet: &Wallet,
    dir: &Path,
    chain: &cocoon_ton::toncenter::Toncenter,
    claim: bool,
    min_claim: u64,
) -> anyhow::Result<()> {
    for p in proxies {
        match fetch(p, wallet, dir).await? {
            Some(h) => eprintln!(
                "{p}: voucher for {} TON in all on channel {}",
                crate::channel_cli::ton(h.voucher.total),
                h.channel.address
            ),
            None => eprintln!("{p}: nothing earned yet"),
        }
    }
    println!("{:<68} {:>16} {:>16} {:>16}", "channel", "voucher, TON", "claimed, TON", "claimable, TON");
    for h in held(dir)? {
        check(&h, wallet.address(), None)?;
        let params = h.channel.params()?;
        let state = actions::channel_state(chain, &params).await?;
        let claimed = state.as_ref().map_or(0, |s| s.claimed);
        let claimable = state.as_ref().and_then(|s| s.claimable(h.voucher.total).ok()).unwrap_or(0);
        let t = crate::channel_cli::ton;
        println!("{:<68} {:>16} {:>16} {:>16}", h.channel.address, t(h.voucher.total), t(claimed), t(claimable));
        if claim && claimable > min_claim {
            let paid = actions::claim(chain, wallet, &params, &h.voucher).await?;
            println!("claimed {} TON on {}", t(paid), h.channel.address);
        }
    }
    Ok(())
}
