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
//!   voucher for everything that address has earned (the worker costs of the
//!   charges its clients paid for) and records it.
//! - **Settlement comes first.** The public endpoints are limited per key
//!   (payee, channel payer) and share a small budget of chain-API calls
//!   (`public_chain_rps`), answered 429/503 at once when it is spent; they
//!   never wait on the wallet and never start funding while a claim waits. A
//!   closing channel's claim is retried with back-off until its window ends;
//!   a claim that lands late or not at all, and a channel whose account
//!   vanished, are logged as errors and counted in the metrics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::Deserialize;
use tracing::{error, info, warn};

use cocoon_client::payouts::HeldVoucher;
use cocoon_protocol::NanoTon;
use cocoon_protocol::proxy_api::{ErrorCode, VoucherAccepted};
use cocoon_ton::channel::{ChannelBinding, ChannelDescriptor, ChannelParams, SignedVoucher, parse_address};
use cocoon_ton::toncenter::Toncenter;
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{TonAddress, Voucher, actions};

use cocoon_runtime::LockExt;

use crate::config::TonConfig;
use crate::ledger::{ClientChannel, Ledger, LedgerError};
use crate::metrics::SettlementMetrics;
use crate::rate::{Bucket, KeyedLimiter, Limiter};
use crate::registry::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("{0}")]
    Invalid(String),
    #[error("too many {what} requests for this key; retry in {} ms", retry_after.as_millis())]
    RateLimited { what: &'static str, retry_after: Duration },
    #[error("{0}; retry later")]
    Busy(&'static str),
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
            PaymentError::RateLimited { .. } => 429,
            PaymentError::Busy(_) => 503,
            PaymentError::NotCovered(_) => 402,
            PaymentError::Closing => 409,
            PaymentError::Chain(_) | PaymentError::Ledger(_) => 503,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            PaymentError::Invalid(_) => ErrorCode::InvalidVoucher,
            PaymentError::RateLimited { .. } => ErrorCode::RateLimited,
            PaymentError::Busy(_) => ErrorCode::Busy,
            PaymentError::NotCovered(_) => ErrorCode::VoucherNotCovered,
            PaymentError::Closing => ErrorCode::ChannelClosing,
            PaymentError::Chain(_) => ErrorCode::ChainUnavailable,
            PaymentError::Ledger(_) => ErrorCode::LedgerUnavailable,
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

pub struct Payments {
    chain: Toncenter,
    wallet: Wallet,
    key: SigningKey,
    ledger: Arc<Ledger>,
    config: TonConfig,
    /// Transfers from one wallet are ordered by its seqno: one at a time.
    wallet_lock: tokio::sync::Mutex<()>,
    /// Claims of closing channels in progress: while any is, public requests
    /// start no transfer from the wallet.
    urgent: AtomicUsize,
    /// Channels with a claim-before-close task running.
    claiming: Mutex<HashSet<String>>,
    /// Chain-API calls the public endpoints may make, all together.
    public_chain: Mutex<Limiter>,
    payout_keys: Mutex<KeyedLimiter<String>>,
    voucher_keys: Mutex<KeyedLimiter<[u8; 32]>>,
    pub metrics: SettlementMetrics,
}

/// Per payee: `GET /v1/payouts` a few times a minute is plenty (a worker's
/// `cocoon payouts --watch` asks once per pass).
const PAYOUTS_PER_KEY: Bucket = Bucket { per_second: 0.2, burst: 5.0 };
/// Per channel payer: a busy runner sends a voucher after every answer.
const VOUCHERS_PER_KEY: Bucket = Bucket { per_second: 50.0, burst: 200.0 };
/// Keys remembered by each per-key limiter.
const MAX_LIMITED_KEYS: usize = 100_000;
/// Longest pause between two tries of a closing channel's claim.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(10);

impl Payments {
    pub fn new(config: TonConfig, key: &SigningKey, ledger: Arc<Ledger>) -> anyhow::Result<Arc<Payments>> {
        let chain = Toncenter::new(&config.api, config.api_key.clone())?;
        let wallet = Wallet::from_seed(&key.to_bytes())?;
        let public = Bucket { per_second: config.public_chain_rps, burst: (config.public_chain_rps * 20.0).max(1.0) };
        Ok(Arc::new(Payments {
            chain,
            wallet,
            key: key.clone(),
            ledger,
            wallet_lock: tokio::sync::Mutex::new(()),
            urgent: AtomicUsize::new(0),
            claiming: Mutex::new(HashSet::new()),
            public_chain: Mutex::new(Limiter::new(public, now_ms())),
            payout_keys: Mutex::new(KeyedLimiter::new(PAYOUTS_PER_KEY, MAX_LIMITED_KEYS)),
            voucher_keys: Mutex::new(KeyedLimiter::new(VOUCHERS_PER_KEY, MAX_LIMITED_KEYS)),
            metrics: SettlementMetrics::default(),
            config,
        }))
    }

    pub fn wallet_address(&self) -> &TonAddress {
        self.wallet.address()
    }

    /// A call to the chain API on behalf of a public request: from the shared
    /// budget that keeps the API's quota for settlement, or refused at once.
    fn public_chain_call(&self) -> Result<(), PaymentError> {
        self.public_chain.locked().take(now_ms()).map_err(|_| {
            self.metrics.public_refused.inc();
            PaymentError::Busy("the chain API budget of public requests is spent")
        })
    }

    pub async fn accept_voucher(self: &Arc<Self>, body: VoucherBody) -> Result<VoucherAccepted, PaymentError> {
        let invalid = |e: &dyn std::fmt::Display| PaymentError::Invalid(e.to_string());
        let params = body.channel.params().map_err(|e| invalid(&e))?;
        self.check_terms(&params)?;
        self.voucher_keys
            .locked()
            .take(&params.payer_key, now_ms())
            .map_err(|retry_after| PaymentError::RateLimited { what: "voucher", retry_after })?;
        let address = params.address().map_err(|e| invalid(&e))?;
        let key = address.to_hex();
        let known = self.ledger.client_channel(&key)?;
        if known.as_ref().is_some_and(|c| c.closing_since != 0) {
            return Err(PaymentError::Closing);
        }
        let (claimed, newest) = known.as_ref().map_or((0, 0), |c| (c.claimed.0, c.voucher_total.0));
        let (binding, seen) = self.binding_and_deposit(&body, &params, &key, known.as_ref()).await?;
        let voucher = body.voucher.verify(&address, &binding, &params.payer_key).map_err(|e| invalid(&e))?;
        if known.is_some() && voucher.total <= newest {
            return Ok(VoucherAccepted { credited: NanoTon(0), voucher_total: NanoTon(newest) });
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
        self.settle_if_due(key, voucher.total.saturating_sub(claimed));
        Ok(VoucherAccepted { credited, voucher_total: NanoTon(voucher.total.max(newest)) })
    }

    /// The channel pays this proxy and leaves it time to claim after a close request.
    fn check_terms(&self, params: &ChannelParams) -> Result<(), PaymentError> {
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
        Ok(())
    }

    /// The network and instance a voucher must name, and the deposit that
    /// covers it: as recorded when the channel was first seen on chain, or
    /// read from the chain now when the channel is new (a runner registers
    /// its channel with the voucher it holds, 0 at first: its deposit is the
    /// collateral that secures the account's credit) or the voucher goes past
    /// the deposit last seen.
    async fn binding_and_deposit(
        &self,
        body: &VoucherBody,
        params: &ChannelParams,
        key: &str,
        known: Option<&ClientChannel>,
    ) -> Result<(ChannelBinding, u64), PaymentError> {
        let recorded = match known {
            Some(c) => {
                Some(stored_channel(&c.descriptor)?.0.binding().map_err(|e| PaymentError::Invalid(e.to_string()))?)
            }
            None => None,
        };
        let seen = known.map_or(0, |c| c.deposit_seen.0);
        if let Some(binding) = recorded
            && body.voucher.total <= seen
        {
            return Ok((binding, seen));
        }
        self.public_chain_call()?;
        let state = actions::channel_state(&self.chain, params)
            .await
            .map_err(chain_err)?
            .ok_or_else(|| PaymentError::NotCovered(format!("channel {key} is not deployed")))?;
        if state.closed || state.closing_since != 0 {
            if known.is_some() {
                self.ledger.mark_closing(key, u64::from(state.closing_since.max(1)))?;
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
        Ok((state.binding(), state.deposited))
    }

    /// A claim once `unclaimed` passes the threshold, unless a closing
    /// channel's claim waits (the watcher retries it).
    fn settle_if_due(self: &Arc<Self>, key: String, unclaimed: u64) {
        if unclaimed < self.config.settle_threshold.0.max(1) || self.urgent.load(Ordering::Acquire) != 0 {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.settle(&key).await {
                me.metrics.claim_attempts_failed.inc();
                warn!(channel = %key, "settling: {e}");
            }
        });
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

    /// Every so often: reads every channel that is open or still owes;
    /// records the deposits of open ones (the collateral of their accounts'
    /// credit); records every channel whose payer asked to close (it takes no
    /// more vouchers from then on, even one its deposit covers) and claims
    /// what it owes at once, retrying until its window ends; and reports a
    /// channel whose account vanished while it still owed.
    pub async fn watch(self: Arc<Self>) {
        let every = Duration::from_secs(u64::from(self.config.min_dispute_window_s / 4).clamp(10, 300));
        loop {
            tokio::time::sleep(every).await;
            self.clone().watch_pass().await;
        }
    }

    /// One pass of [`Payments::watch`].
    pub async fn watch_pass(self: Arc<Self>) {
        let channels = match self.ledger.client_channels() {
            Ok(c) => c,
            Err(e) => {
                error!("the payments watcher cannot read the ledger: {e}");
                return;
            }
        };
        for c in channels.into_iter().filter(|c| c.closing_since == 0 || c.voucher_total.0 > c.claimed.0) {
            let Ok((_, params)) = stored_channel(&c.descriptor) else { continue };
            let owed = c.voucher_total.0.saturating_sub(c.claimed.0);
            match actions::channel_state(&self.chain, &params).await {
                Ok(Some(s)) if s.closing_since != 0 || s.closed => {
                    if c.closing_since == 0 {
                        warn!(channel = %c.address, "the payer asked to close: taking no more vouchers");
                        if let Err(e) = self.ledger.mark_closing(&c.address, u64::from(s.closing_since.max(1))) {
                            error!(channel = %c.address, "recording the close: {e}");
                        }
                    }
                    if owed > 0 && !s.closed {
                        let closes_at = u64::from(s.closing_since) + u64::from(s.dispute_window);
                        self.clone().claim_before_close(c.address.clone(), u64::from(s.closing_since), closes_at);
                    } else if owed > 0 && s.closed && s.claimed < c.voucher_total.0 {
                        self.metrics.claims_missed.inc();
                        error!(
                            channel = %c.address,
                            lost = c.voucher_total.0 - s.claimed,
                            "the channel closed with vouchers the proxy never claimed"
                        );
                        if let Err(e) = self.ledger.record_claim(&c.address, NanoTon(s.claimed), NanoTon(0)) {
                            error!(channel = %c.address, "recording the loss: {e}");
                        }
                    }
                }
                Ok(Some(s)) => {
                    if let Err(e) = self.ledger.see_deposit(&c.address, NanoTon(s.deposited)) {
                        warn!(channel = %c.address, "recording the deposit: {e}");
                    }
                }
                Ok(None) => {
                    self.metrics.channels_vanished.inc();
                    error!(
                        channel = %c.address,
                        owed,
                        deposit_seen = c.deposit_seen.0,
                        "a client's channel is not on chain any more (deleted, or the chain API answers for another network)"
                    );
                }
                Err(e) => {
                    self.metrics.chain_errors.inc();
                    warn!(channel = %c.address, "watching: {e}");
                }
            }
        }
    }

    /// Claims `address` until paid or its window (ending at unix time
    /// `closes_at`) is over, backing off between tries; one task per channel.
    fn claim_before_close(self: Arc<Self>, address: String, closing_since: u64, closes_at: u64) {
        if !self.claiming.locked().insert(address.clone()) {
            return;
        }
        self.urgent.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(1);
            loop {
                match self.settle(&address).await {
                    Ok(paid) => {
                        let now = now_ms() / 1000;
                        self.metrics.claims_paid.inc();
                        // Late: past half the window, when a second try might not have fit.
                        if now > closing_since + closes_at.saturating_sub(closing_since) / 2 {
                            self.metrics.claims_late.inc();
                            error!(channel = %address, paid, "a closing channel's claim landed late in its window");
                        } else {
                            info!(channel = %address, paid, "claimed a closing channel");
                        }
                        break;
                    }
                    Err(e) => {
                        self.metrics.claim_attempts_failed.inc();
                        let left = closes_at.saturating_sub(now_ms() / 1000);
                        if Duration::from_secs(left) <= pause {
                            self.metrics.claims_missed.inc();
                            error!(channel = %address, "a closing channel's claim did not land within its window: {e}");
                            break;
                        }
                        warn!(channel = %address, retry_in_ms = pause.as_millis() as u64, "claiming a closing channel: {e}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_CLAIM_BACKOFF);
                    }
                }
            }
            self.urgent.fetch_sub(1, Ordering::AcqRel);
            self.claiming.locked().remove(&address);
        });
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
        self.payout_keys
            .locked()
            .take(&payee.to_hex(), now_ms())
            .map_err(|retry_after| PaymentError::RateLimited { what: "payout", retry_after })?;
        let earned = self.earned(payee)?;
        if earned == 0 {
            return Ok(None);
        }
        // Never wait on the wallet here, and start no transfer while a closing channel's claim waits.
        if self.urgent.load(Ordering::Acquire) > 0 {
            return Err(PaymentError::Busy("the proxy is settling a closing channel"));
        }
        let Ok(_wallet) = self.wallet_lock.try_lock() else {
            return Err(PaymentError::Busy("the proxy's wallet is sending a transfer"));
        };
        self.public_chain_call()?;
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
