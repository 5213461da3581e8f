//! Payments on TON (`[ton]` in the config). The proxy's wallet is the v4R2
//! wallet of its account key, so a client finds it from the key the proxy's
//! evidence binds.
//!
//! - **Clients pay** with cumulative vouchers on their channels to this
//!   wallet (`POST /v1/vouchers`). A voucher is credited to the client's
//!   account with what it adds to the newest one before, once its signature
//!   checks and the channel's deposit seen on chain covers it. Credit and
//!   voucher are one ledger transaction.
//! - **Settlement**: once a channel's vouchers exceed what was claimed by
//!   `settle_threshold`, the proxy claims on chain. A watcher claims at once
//!   any channel whose payer asked to close, well within the dispute window.
//! - **Workers are paid** through channels from this wallet to their payout
//!   address, opened and funded on demand; `GET /v1/payouts?payee=` signs a
//!   voucher for everything that address has earned (the sum of the worker
//!   costs of its charges) and records it.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::Deserialize;
use tracing::{info, warn};

use cocoon_client::payouts::HeldVoucher;
use cocoon_protocol::NanoTon;
use cocoon_ton::channel::{ChannelDescriptor, ChannelParams, SignedVoucher, parse_address};
use cocoon_ton::toncenter::Toncenter;
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{TonAddress, Voucher, actions};

use crate::config::TonConfig;
use crate::ledger::{Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotCovered(String),
    #[error("the channel is closing or closed: it takes no more vouchers")]
    Closing,
    #[error("the TON chain: {0}")]
    Chain(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl PaymentError {
    pub fn status(&self) -> u16 {
        match self {
            PaymentError::Invalid(_) => 400,
            PaymentError::NotCovered(_) => 402,
            PaymentError::Closing => 409,
            PaymentError::Chain(_) | PaymentError::Ledger(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PaymentError::Invalid(_) => "invalid_voucher",
            PaymentError::NotCovered(_) => "voucher_not_covered",
            PaymentError::Closing => "channel_closing",
            PaymentError::Chain(_) => "chain_unavailable",
            PaymentError::Ledger(_) => "ledger_unavailable",
        }
    }
}

/// A channel as the ledger stores it (its descriptor's JSON), with its parameters.
fn stored_channel(json: &str) -> Result<(ChannelDescriptor, ChannelParams), PaymentError> {
    let descriptor: ChannelDescriptor = serde_json::from_str(json).map_err(|e| PaymentError::Invalid(e.to_string()))?;
    let params = descriptor.params().map_err(|e| PaymentError::Invalid(e.to_string()))?;
    Ok((descriptor, params))
}

fn chain_err(e: impl std::fmt::Display) -> PaymentError {
    PaymentError::Chain(e.to_string())
}

/// `POST /v1/vouchers`: a channel and a voucher on it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoucherBody {
    pub channel: ChannelDescriptor,
    pub voucher: SignedVoucher,
}

#[derive(Debug, serde::Serialize)]
pub struct Accepted {
    /// nanoTON this voucher added to the account.
    pub credited: u64,
    /// The newest voucher's total on this channel.
    pub voucher_total: u64,
}

pub struct Payments {
    chain: Toncenter,
    wallet: Wallet,
    key: SigningKey,
    ledger: Arc<Ledger>,
    config: TonConfig,
    /// Transfers from one wallet are ordered by its seqno: one at a time.
    wallet_lock: tokio::sync::Mutex<()>,
}

impl Payments {
    pub fn new(config: TonConfig, key: &SigningKey, ledger: Arc<Ledger>) -> anyhow::Result<Arc<Payments>> {
        let chain = Toncenter::new(&config.api, config.api_key.clone())?;
        let wallet = Wallet::from_seed(&key.to_bytes())?;
        Ok(Arc::new(Payments {
            chain,
            wallet,
            key: key.clone(),
            ledger,
            config,
            wallet_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn wallet_address(&self) -> &TonAddress {
        self.wallet.address()
    }

    pub async fn accept_voucher(self: &Arc<Self>, body: VoucherBody) -> Result<Accepted, PaymentError> {
        let invalid = |e: &dyn std::fmt::Display| PaymentError::Invalid(e.to_string());
        let params = body.channel.params().map_err(|e| invalid(&e))?;
        if &params.payee != self.wallet.address() {
            return Err(PaymentError::Invalid(format!(
                "the channel pays {}; this proxy's wallet is {}",
                params.payee,
                self.wallet.address()
            )));
        }
        if params.dispute_window < self.config.min_dispute_window_s {
            return Err(PaymentError::Invalid(format!(
                "the channel's close window is {} s; this proxy needs at least {} s to claim",
                params.dispute_window, self.config.min_dispute_window_s
            )));
        }
        let address = params.address().map_err(|e| invalid(&e))?;
        let key = address.to_hex();
        let known = self.ledger.client_channel(&key)?;
        if known.as_ref().is_some_and(|c| c.closing_since != 0) {
            return Err(PaymentError::Closing);
        }
        // The network and instance a voucher must name: as recorded when the
        // channel was first seen on chain, or read from the chain now.
        let recorded = match &known {
            Some(c) => Some(stored_channel(&c.descriptor)?.0.binding().map_err(|e| invalid(&e))?),
            None => None,
        };
        let (mut seen, claimed, newest) =
            known.as_ref().map_or((0, 0, 0), |c| (c.deposit_seen.0, c.claimed.0, c.voucher_total.0));
        let mut binding = recorded;
        // A channel seen for the first time (a runner registers its channel with
        // the voucher it holds, 0 at first) is read on chain: its deposit is the
        // collateral that secures the account's credit.
        if known.is_none() || body.voucher.total > seen {
            let state = actions::channel_state(&self.chain, &params)
                .await
                .map_err(chain_err)?
                .ok_or_else(|| PaymentError::NotCovered(format!("channel {key} is not deployed")))?;
            if state.closed || state.closing_since != 0 {
                if known.is_some() {
                    self.ledger.mark_closing(&key, u64::from(state.closing_since.max(1)))?;
                }
                return Err(PaymentError::Closing);
            }
            if body.channel.binding != Some(state.binding()) {
                return Err(PaymentError::Invalid(format!(
                    "the channel file names network and instance {:?}; on chain the channel is network {} instance {} \
                     (a channel deployed again, or on another network)",
                    body.channel.binding, state.global_id, state.instance
                )));
            }
            binding = Some(state.binding());
            seen = state.deposited;
        }
        let binding = binding.expect("recorded or read above");
        let voucher = body.voucher.verify(&address, &binding, &params.payer_key).map_err(|e| invalid(&e))?;
        if known.is_some() && voucher.total <= newest {
            return Ok(Accepted { credited: 0, voucher_total: newest });
        }
        if voucher.total > seen {
            return Err(PaymentError::NotCovered(format!(
                "the voucher's total {} exceeds the channel's deposit {} on chain; top the channel up",
                voucher.total, seen
            )));
        }
        let descriptor = serde_json::to_string(&body.channel).expect("JSON encodes");
        let credited = self.ledger.credit_voucher(
            &key,
            &params.payer_key,
            &descriptor,
            NanoTon(seen),
            NanoTon(voucher.total),
            &body.voucher.signature,
        )?;
        if voucher.total.saturating_sub(claimed) >= self.config.settle_threshold.0.max(1) {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.settle(&key).await {
                    warn!(channel = %key, "settling: {e}");
                }
            });
        }
        Ok(Accepted { credited: credited.0, voucher_total: voucher.total.max(newest) })
    }

    /// Claims the newest voucher of a client's channel; returns what it paid.
    pub async fn settle(&self, address: &str) -> Result<u64, PaymentError> {
        let _wallet = self.wallet_lock.lock().await;
        let Some(ch) = self.ledger.client_channel(address)? else {
            return Err(PaymentError::Invalid(format!("no channel {address} in the ledger")));
        };
        let Some(signature) = ch.signature.clone() else { return Ok(0) };
        let (descriptor, params) = stored_channel(&ch.descriptor)?;
        let binding = descriptor.binding().map_err(chain_err)?;
        let voucher = SignedVoucher {
            channel: address.to_owned(),
            global_id: binding.global_id,
            instance: binding.instance,
            total: ch.voucher_total.0,
            signature,
        };
        let state = actions::channel_state(&self.chain, &params)
            .await
            .map_err(chain_err)?
            .ok_or_else(|| PaymentError::NotCovered(format!("channel {address} is not deployed")))?;
        if state.claimed >= voucher.total {
            self.ledger.record_claim(address, NanoTon(state.claimed.min(voucher.total)), NanoTon(0))?;
            return Ok(0);
        }
        let paid = actions::claim(&self.chain, &self.wallet, &params, &voucher).await.map_err(chain_err)?;
        self.ledger.record_claim(address, NanoTon(voucher.total), NanoTon(paid))?;
        info!(channel = %address, paid, total = voucher.total, "claimed a client's channel");
        Ok(paid)
    }

    /// Claims every channel owing at least `min` (all that owe anything with 0).
    pub async fn settle_all(&self, min: u64) -> Vec<(String, Result<u64, PaymentError>)> {
        let channels = match self.ledger.client_channels() {
            Ok(c) => c,
            Err(e) => return vec![("ledger".into(), Err(e.into()))],
        };
        let mut out = Vec::new();
        for c in channels {
            let owed = c.voucher_total.0.saturating_sub(c.claimed.0);
            if owed > 0 && owed >= min {
                out.push((c.address.clone(), self.settle(&c.address).await));
            }
        }
        out
    }

    /// Every so often: records every channel whose payer asked to close (it
    /// takes no more vouchers from then on, even one its deposit covers), and
    /// claims at once what such a channel still owes. Channels already known
    /// to be closing and still owing are claimed again until paid.
    pub async fn watch(self: Arc<Self>) {
        let every = Duration::from_secs(u64::from(self.config.min_dispute_window_s / 4).clamp(10, 300));
        loop {
            tokio::time::sleep(every).await;
            let Ok(channels) = self.ledger.client_channels() else { continue };
            for c in channels.into_iter().filter(|c| c.closing_since == 0 || c.voucher_total.0 > c.claimed.0) {
                let Ok((_, params)) = stored_channel(&c.descriptor) else { continue };
                match actions::channel_state(&self.chain, &params).await {
                    Ok(Some(s)) if s.closing_since != 0 || s.closed => {
                        if c.closing_since == 0 {
                            warn!(channel = %c.address, "the payer asked to close: taking no more vouchers");
                            if let Err(e) = self.ledger.mark_closing(&c.address, u64::from(s.closing_since.max(1))) {
                                warn!(channel = %c.address, "recording the close: {e}");
                            }
                        }
                        if c.voucher_total.0 > c.claimed.0
                            && !s.closed
                            && let Err(e) = self.settle(&c.address).await
                        {
                            warn!(channel = %c.address, "claiming a closing channel: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(channel = %c.address, "watching: {e}"),
                }
            }
        }
    }

    /// What `payee` has earned, over the charges of every worker paying out to it.
    fn earned(&self, payee: &TonAddress) -> Result<u64, PaymentError> {
        Ok(self
            .ledger
            .earnings_by_payout()?
            .into_iter()
            .filter(|(a, _)| parse_address("payout", a).is_ok_and(|a| &a == payee))
            .map(|(_, n)| n.0)
            .sum())
    }

    /// `GET /v1/payouts?payee=`: a voucher for everything `payee` has earned,
    /// on a channel from this wallet funded to cover it; `None` when nothing is earned.
    pub async fn worker_voucher(&self, payee: &TonAddress) -> Result<Option<HeldVoucher>, PaymentError> {
        let earned = self.earned(payee)?;
        if earned == 0 {
            return Ok(None);
        }
        let _wallet = self.wallet_lock.lock().await;
        let key = payee.to_hex();
        if self.ledger.worker_channel(&key)?.is_none() {
            let params = ChannelParams {
                payer: self.wallet.address().clone(),
                payee: payee.clone(),
                payer_key: self.key.verifying_key().to_bytes(),
                // Unique per channel this wallet opens to this payee.
                channel_id: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(1),
                dispute_window: self.config.worker_dispute_window_s,
            };
            let d = ChannelDescriptor::from_params(&params).map_err(chain_err)?;
            self.ledger.create_worker_channel(&key, &serde_json::to_string(&d).expect("JSON encodes"))?;
        }
        let ch = self.ledger.worker_channel(&key)?.expect("created above");
        let (mut descriptor, params) = stored_channel(&ch.descriptor)?;
        let on_chain = actions::channel_state(&self.chain, &params).await.map_err(chain_err)?;
        let deposited = on_chain.as_ref().map_or(0, |s| s.deposited);
        let state = if deposited < earned {
            let add = earned - deposited + self.config.worker_deposit.0;
            let state = actions::top_up(&self.chain, &self.wallet, &params, add).await.map_err(chain_err)?;
            self.ledger.record_worker_funding(&key, NanoTon(state.deposited), NanoTon(add))?;
            info!(payee = %key, deposited = state.deposited, "funded the channel to a worker");
            state
        } else {
            self.ledger.record_worker_funding(&key, NanoTon(deposited), NanoTon(0))?;
            on_chain.expect("deposited covers earnings, so it is deployed")
        };
        // Funded: its vouchers name the network and this instance, recorded once.
        if descriptor.binding != Some(state.binding()) {
            descriptor = ChannelDescriptor::bound(&params, state.binding()).map_err(chain_err)?;
            self.ledger.bind_worker_channel(&key, &serde_json::to_string(&descriptor).expect("JSON encodes"))?;
        }
        let signed = Voucher { channel: params.address().map_err(chain_err)?, binding: state.binding(), total: earned }
            .sign(&self.key)
            .map_err(chain_err)?;
        self.ledger.record_worker_voucher(&key, NanoTon(earned), &signed.signature)?;
        Ok(Some(HeldVoucher { channel: descriptor, voucher: signed }))
    }
}
