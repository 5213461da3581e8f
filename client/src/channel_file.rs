//! Channel files (a payment channel's descriptor, as `cocoon channel open`
//! writes it and `cocoon serve --channel` reads it) and TON amounts as
//! people write them.

use std::path::Path;

use anyhow::{Context, bail};
use cocoon_ton::TonAddress;
use cocoon_ton::actions;
use cocoon_ton::channel::{ChannelDescriptor, ChannelParams, ChannelState};
use cocoon_ton::toncenter::Toncenter;
use cocoon_ton::wallet::Wallet;

/// Reads a channel file (the channel's descriptor: what fixes the channel and
/// its address); refused when its parameters do not give its address.
pub fn load_channel(path: &Path) -> anyhow::Result<(ChannelParams, ChannelDescriptor)> {
    let text = cocoon_attestation::read_limited(path, 64 * 1024)
        .map_err(|e| anyhow::anyhow!("channel file {}: {e}", path.display()))?;
    let d: ChannelDescriptor =
        serde_json::from_slice(&text).with_context(|| format!("channel file {}", path.display()))?;
    let params = d.params().map_err(|e| anyhow::anyhow!("channel file {}: {e}", path.display()))?;
    Ok((params, d))
}

/// Deploys a channel from `payer` to `payee` and deposits `amount` into it
/// (the wallet pays the top-up fee on top), writing its file to `out` first
/// (so that a crash during the deposit leaves the channel findable) and
/// again, bound to its network and instance, once funded. A random channel
/// id unless `channel_id` names one. Refused when `out` exists.
pub async fn open_channel(
    chain: &Toncenter,
    payer: &Wallet,
    payee: TonAddress,
    amount: u64,
    channel_id: Option<u64>,
    dispute_window: u32,
    out: &Path,
) -> anyhow::Result<ChannelState> {
    let channel_id = channel_id.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the operating system's random source failed");
        u64::from_le_bytes(b)
    });
    let params = ChannelParams {
        payer: payer.address().clone(),
        payee,
        payer_key: payer.signing_key().verifying_key().to_bytes(),
        channel_id,
        dispute_window,
    };
    if out.exists() {
        bail!("{} exists already; a channel file is never overwritten", out.display());
    }
    let file = ChannelDescriptor::from_params(&params)?;
    crate::durable::write(out, &serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", out.display()))?;
    let state = actions::top_up(chain, payer, &params, amount).await?;
    // Funded: its vouchers bind the network and this instance, which the file now records.
    let file = ChannelDescriptor::bound(&params, state.binding())?;
    crate::durable::write(out, &serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(state)
}

/// "2.5" TON → nanoTON, exactly (no floating point).
pub fn parse_ton(text: &str) -> Result<u64, String> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 9
        || !(whole.chars().chain(frac.chars())).all(|c| c.is_ascii_digit())
    {
        return Err(format!("expected TON like 10 or 2.5 (at most 9 decimals), found {text:?}"));
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("{text:?} is too large"))? };
    let frac: u64 = format!("{frac:0<9}").parse().map_err(|_| format!("{text:?}"))?;
    whole.checked_mul(1_000_000_000).and_then(|w| w.checked_add(frac)).ok_or_else(|| format!("{text:?} is too large"))
}

pub fn ton(nano: u64) -> String {
    format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::{parse_ton, ton};

    #[test]
    fn ton_amounts_parse_exactly() {
        assert_eq!(parse_ton("10"), Ok(10_000_000_000));
        assert_eq!(parse_ton("2.5"), Ok(2_500_000_000));
        assert_eq!(parse_ton("0.000000001"), Ok(1));
        assert_eq!(parse_ton(".5"), Ok(500_000_000));
        assert_eq!(ton(2_500_000_001), "2.500000001");
        for bad in ["", ".", "1.0000000001", "-1", "1e9", "abc", "99999999999999999999"] {
            assert!(parse_ton(bad).is_err(), "{bad}");
        }
    }
}
