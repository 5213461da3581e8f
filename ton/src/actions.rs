//! What payer and payee do on chain, each checked before and after: nothing
//! is sent that the contract would refuse, and an action reports success only
//! once the channel's state on chain shows it.

use std::time::Duration;

use tonlib_core::TonAddress;
use tonlib_core::cell::ArcCell;

use crate::channel::{self, ChannelParams, ChannelState, SignedVoucher};
use crate::registry;
use crate::toncenter::{ChainError, Toncenter, poll};
use crate::wallet::{Outgoing, Wallet};
use crate::{TOPUP_FEE, TonError};

/// Value sent with a claim, close or finalize for the contract's gas; what is
/// not spent comes back with the payout.
pub const GAS_VALUE: u64 = 50_000_000;

const SETTLE: Duration = Duration::from_secs(60);

fn refuse(what: &'static str, expected: String, found: String) -> ChainError {
    ChainError::Ton(TonError::Unexpected { what, expected, found })
}

/// The channel's state on chain, checked to be this channel's; `None` before deployment.
pub async fn channel_state(chain: &Toncenter, params: &ChannelParams) -> Result<Option<ChannelState>, ChainError> {
    let address = params.address()?;
    if chain.account(&address).await?.state != "active" {
        return Ok(None);
    }
    let stack = chain.run_get_method(&address, "get_channel_state", vec![]).await?;
    let state = ChannelState::from_stack(&stack)?;
    state.check_params(params)?;
    Ok(Some(state))
}

async fn wait_for(
    chain: &Toncenter,
    params: &ChannelParams,
    what: &str,
    done: impl Fn(&ChannelState) -> bool,
) -> Result<ChannelState, ChainError> {
    let described = || format!("{what} on channel {}", params.address().map(|a| a.to_hex()).unwrap_or_default());
    poll(chain, SETTLE, described, || async { Ok(channel_state(chain, params).await?.filter(|s| done(s))) }).await
}

/// Deploys the channel if needed and deposits `amount` (plus the top-up fee).
pub async fn top_up(
    chain: &Toncenter,
    payer: &Wallet,
    params: &ChannelParams,
    amount: u64,
) -> Result<ChannelState, ChainError> {
    if payer.address() != &params.payer {
        return Err(refuse("payer wallet", params.payer.to_hex(), payer.address().to_hex()));
    }
    let before = channel_state(chain, params).await?;
    if let Some(s) = &before
        && (s.closed || s.closing_since != 0)
    {
        return Err(refuse("channel", "an open channel".into(), "a closing or closed one".into()));
    }
    let deposited_before = before.as_ref().map_or(0, |s| s.deposited);
    let message = Outgoing {
        dest: params.address()?,
        value: amount + TOPUP_FEE,
        bounce: before.is_some(),
        body: channel::top_up_body(0)?,
        state_init: if before.is_none() { Some(params.state_init()?) } else { None },
    };
    payer.send(chain, vec![message]).await?;
    wait_for(chain, params, "top-up", |s| s.deposited >= deposited_before + amount).await
}

/// Claims what `voucher` adds to the payee's earlier claims. Checks first that
/// it is this channel's, signed by the payer, and claimable now.
pub async fn claim(
    chain: &Toncenter,
    payee: &Wallet,
    params: &ChannelParams,
    voucher: &SignedVoucher,
) -> Result<u64, ChainError> {
    if payee.address() != &params.payee {
        return Err(refuse("payee wallet", params.payee.to_hex(), payee.address().to_hex()));
    }
    let state = channel_state(chain, params)
        .await?
        .ok_or_else(|| refuse("channel", "a deployed channel".into(), "no contract at its address".into()))?;
    // A voucher for another network or an earlier instance of this account pays nothing: not sent.
    let v = voucher.verify(&params.address()?, &state.binding(), &params.payer_key)?;
    let amount = state.claimable(v.total).map_err(|why| {
        refuse(
            "voucher",
            "a claimable voucher".into(),
            format!("{why} (total {}, claimed {}, deposited {})", v.total, state.claimed, state.deposited),
        )
    })?;
    let message = Outgoing {
        dest: params.address()?,
        value: GAS_VALUE,
        bounce: true,
        body: voucher.claim_body(0)?,
        state_init: None,
    };
    payee.send(chain, vec![message]).await?;
    wait_for(chain, params, "claim", |s| s.claimed >= v.total).await?;
    Ok(amount)
}

/// The payer starts the dispute window.
pub async fn request_close(
    chain: &Toncenter,
    payer: &Wallet,
    params: &ChannelParams,
) -> Result<ChannelState, ChainError> {
    payer_action(
        chain,
        payer,
        params,
        channel::request_close_body(0)?,
        "close request",
        |s| s.closing_since != 0,
        |s| {
            if s.closing_since != 0 { Err("the channel is already closing") } else { Ok(()) }
        },
    )
    .await
}

/// The payer takes back the rest once the window has passed.
pub async fn finalize(
    chain: &Toncenter,
    payer: &Wallet,
    params: &ChannelParams,
    now: u64,
) -> Result<ChannelState, ChainError> {
    payer_action(
        chain,
        payer,
        params,
        channel::finalize_body(0)?,
        "finalize",
        |s| s.closed,
        |s| {
            if s.closing_since == 0 {
                Err("the channel is not closing (request a close first)")
            } else if now < u64::from(s.closing_since) + u64::from(s.dispute_window) {
                Err("the dispute window has not passed yet")
            } else {
                Ok(())
            }
        },
    )
    .await
}

async fn payer_action(
    chain: &Toncenter,
    payer: &Wallet,
    params: &ChannelParams,
    body: tonlib_core::cell::Cell,
    what: &'static str,
    done: impl Fn(&ChannelState) -> bool,
    allowed: impl Fn(&ChannelState) -> Result<(), &'static str>,
) -> Result<ChannelState, ChainError> {
    if payer.address() != &params.payer {
        return Err(refuse("payer wallet", params.payer.to_hex(), payer.address().to_hex()));
    }
    let state = channel_state(chain, params)
        .await?
        .ok_or_else(|| refuse("channel", "a deployed channel".into(), "no contract at its address".into()))?;
    if state.closed {
        return Err(refuse("channel", "an unclosed channel".into(), "a closed one".into()));
    }
    allowed(&state).map_err(|why| refuse(what, "an allowed action".into(), why.into()))?;
    let message = Outgoing { dest: params.address()?, value: GAS_VALUE, bounce: true, body, state_init: None };
    payer.send(chain, vec![message]).await?;
    wait_for(chain, params, what, done).await
}

/// The registry's lists as its get-methods return them, each checked
/// (an image's key is its document's SHA-256); `None` before deployment.
pub async fn registry_lists(chain: &Toncenter, registry: &TonAddress) -> Result<Option<RegistryLists>, ChainError> {
    if chain.account(registry).await?.state != "active" {
        return Ok(None);
    }
    let one = |stack: Vec<crate::stack::StackEntry>, what: &'static str| -> Result<Option<ArcCell>, ChainError> {
        match &stack[..] {
            [entry] => Ok(entry.cell_opt(what)?),
            other => Err(refuse(what, "one stack entry".into(), format!("{}", other.len()))),
        }
    };
    let images = one(chain.run_get_method(registry, "get_images", vec![]).await?, "get_images")?;
    let models = one(chain.run_get_method(registry, "get_models", vec![]).await?, "get_models")?;
    let proxies = one(chain.run_get_method(registry, "get_proxies", vec![]).await?, "get_proxies")?;
    let owner = chain.run_get_method(registry, "get_owner", vec![]).await?;
    let owner = match &owner[..] {
        [entry] => entry.address("owner")?,
        other => return Err(refuse("get_owner", "one stack entry".into(), format!("{}", other.len()))),
    };
    Ok(Some(RegistryLists {
        owner,
        images: registry::images_from(images.as_ref())?,
        models: registry::models_from(models.as_ref())?,
        proxies: registry::proxies_from(proxies.as_ref())?,
    }))
}

/// What the registry lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLists {
    pub owner: TonAddress,
    /// Reference-values documents by SHA-256.
    pub images: std::collections::BTreeMap<[u8; 32], Vec<u8>>,
    pub models: Vec<[u8; 32]>,
    pub proxies: std::collections::BTreeMap<[u8; 32], registry::ProxyEntry>,
}

/// The owner changes the registry (deploying it with the first change), and
/// waits until its lists satisfy `done`.
pub async fn registry_change(
    chain: &Toncenter,
    owner: &Wallet,
    body: tonlib_core::cell::Cell,
    done: impl Fn(&RegistryLists) -> bool,
) -> Result<RegistryLists, ChainError> {
    let address = registry::address(owner.address())?;
    let before = registry_lists(chain, &address).await?;
    if let Some(l) = &before
        && &l.owner != owner.address()
    {
        return Err(refuse("registry owner", owner.address().to_hex(), l.owner.to_hex()));
    }
    let message = Outgoing {
        dest: address.clone(),
        value: GAS_VALUE,
        bounce: before.is_some(),
        body,
        state_init: if before.is_none() { Some(registry::state_init(owner.address())?) } else { None },
    };
    owner.send(chain, vec![message]).await?;
    let described = || format!("registry change on {address}");
    poll(chain, SETTLE, described, || async { Ok(registry_lists(chain, &address).await?.filter(|l| done(l))) }).await
}
