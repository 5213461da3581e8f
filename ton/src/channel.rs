//! The payment channel (`contracts/src/payment_channel.tolk`): its state
//! init and address, cumulative vouchers, the messages payer and payee send,
//! and its state as `get_channel_state` returns it.

use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use num_bigint::BigUint;
use serde::{Deserialize, Serialize};
use tonlib_core::TonAddress;
use tonlib_core::cell::{ArcCell, Cell, CellBuilder};
use tonlib_core::tlb_types::block::state_init::StateInit;
use tonlib_core::tlb_types::tlb::TLB;

use crate::stack::StackEntry;
use crate::{TonError, code, coins_to_u64, op};

/// What fixes a channel, and so its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelParams {
    pub payer: TonAddress,
    pub payee: TonAddress,
    /// The payer's Ed25519 key, which signs vouchers.
    pub payer_key: [u8; 32],
    /// Distinguishes channels between the same parties; never reuse one.
    pub channel_id: u64,
    /// Seconds the payee has to claim after the payer asks to close.
    pub dispute_window: u32,
}

impl ChannelParams {
    /// `Storage` of the contract at deployment: nothing deposited or claimed, open.
    pub fn initial_data(&self) -> Result<Cell, TonError> {
        let mut config = CellBuilder::new();
        config
            .store_address(&self.payer)?
            .store_address(&self.payee)?
            .store_slice(&self.payer_key)?
            .store_u64(64, self.channel_id)?
            .store_u32(32, self.dispute_window)?;
        let zero = BigUint::from(0u8);
        let mut data = CellBuilder::new();
        data.store_child(config.build()?)?
            .store_coins(&zero)?
            .store_coins(&zero)?
            .store_u32(32, 0)?
            .store_bit(false)?
            .store_u64(64, 0)?;
        Ok(data.build()?)
    }

    pub fn state_init(&self) -> Result<Cell, TonError> {
        let init = StateInit::new(code::payment_channel(), Arc::new(self.initial_data()?));
        Ok(init.to_cell()?)
    }

    /// The channel's address in the basechain.
    pub fn address(&self) -> Result<TonAddress, TonError> {
        Ok(TonAddress::derive(0, code::payment_channel(), Arc::new(self.initial_data()?))?)
    }
}

/// Where a channel's vouchers are good: the network (its global id, config
/// param 19: mainnet -239, testnet -3) and the channel's instance (the logical
/// time of the transaction that first funded the account). TON addresses are
/// the same on every network, and an account deleted and deployed again at
/// the same address starts from nothing claimed; a voucher that names both
/// pays on one network and one instance only. Read from the chain once the
/// channel is funded ([`ChannelState::binding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelBinding {
    pub global_id: i32,
    pub instance: u64,
}

/// A channel's parameters as they travel in files and API bodies (JSON): a
/// channel file, a voucher's companion, a proxy's answer to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDescriptor {
    /// The channel's address (raw `0:<hex>`), checked against the parameters.
    pub address: String,
    pub payer: String,
    pub payee: String,
    /// The payer's Ed25519 key, hex.
    pub payer_key: String,
    pub channel_id: u64,
    pub dispute_window: u32,
    /// The network and instance its vouchers bind; `None` until it is funded.
    pub binding: Option<ChannelBinding>,
}

impl ChannelDescriptor {
    /// A descriptor of a channel not funded yet (no binding).
    pub fn from_params(p: &ChannelParams) -> Result<ChannelDescriptor, TonError> {
        Ok(ChannelDescriptor {
            address: p.address()?.to_hex(),
            payer: p.payer.to_hex(),
            payee: p.payee.to_hex(),
            payer_key: hex::encode(p.payer_key),
            channel_id: p.channel_id,
            dispute_window: p.dispute_window,
            binding: None,
        })
    }

    /// A descriptor of a funded channel, whose vouchers bind `binding`.
    pub fn bound(p: &ChannelParams, binding: ChannelBinding) -> Result<ChannelDescriptor, TonError> {
        Ok(ChannelDescriptor { binding: Some(binding), ..ChannelDescriptor::from_params(p)? })
    }

    /// The binding, refused when the channel was never funded.
    pub fn binding(&self) -> Result<ChannelBinding, TonError> {
        self.binding.ok_or_else(|| TonError::Unexpected {
            what: "channel binding",
            expected: "the network id and instance of a funded channel".into(),
            found: format!("none for {} (fund it first)", self.address),
        })
    }

    /// The parameters, refused unless they give the stated address.
    pub fn params(&self) -> Result<ChannelParams, TonError> {
        let payer_key =
            hex::decode(&self.payer_key).ok().and_then(|k| <[u8; 32]>::try_from(k).ok()).ok_or_else(|| {
                TonError::Unexpected {
                    what: "payer_key",
                    expected: "64 hex digits".into(),
                    found: format!("{:?}", self.payer_key),
                }
            })?;
        let params = ChannelParams {
            payer: parse_address("payer", &self.payer)?,
            payee: parse_address("payee", &self.payee)?,
            payer_key,
            channel_id: self.channel_id,
            dispute_window: self.dispute_window,
        };
        let address = params.address()?.to_hex();
        if address != parse_address("address", &self.address)?.to_hex() {
            return Err(TonError::Unexpected {
                what: "channel address",
                expected: format!("{address} (what its parameters give)"),
                found: self.address.clone(),
            });
        }
        Ok(params)
    }
}

/// An address in raw (`0:<hex>`) or user-friendly form.
pub fn parse_address(what: &'static str, text: &str) -> Result<TonAddress, TonError> {
    text.parse::<TonAddress>().map_err(|e| TonError::Unexpected {
        what,
        expected: "a TON address (raw 0:<hex> or user-friendly)".into(),
        found: format!("{text:?} ({e})"),
    })
}

/// "The payer owes the payee `total` nanoTON on `channel`, in all", on the
/// network and channel instance of `binding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voucher {
    pub channel: TonAddress,
    pub binding: ChannelBinding,
    pub total: u64,
}

impl Voucher {
    pub fn to_cell(&self) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_u32(32, op::VOUCHER)?
            .store_address(&self.channel)?
            .store_i32(32, self.binding.global_id)?
            .store_u64(64, self.binding.instance)?
            .store_coins(&BigUint::from(self.total))?;
        Ok(b.build()?)
    }

    /// What is signed: the voucher cell's representation hash, as the contract checks it.
    pub fn hash(&self) -> Result<[u8; 32], TonError> {
        Ok(crate::hash32(&self.to_cell()?.cell_hash()))
    }

    /// Signs the voucher. A binding of instance 0 names no funded channel: refused.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedVoucher, TonError> {
        if self.binding.instance == 0 {
            return Err(TonError::Unexpected {
                what: "voucher instance",
                expected: "the instance of a funded channel".into(),
                found: "0 (the channel was never funded)".into(),
            });
        }
        let signature = key.sign(&self.hash()?).to_bytes();
        Ok(SignedVoucher {
            channel: self.channel.to_hex(),
            global_id: self.binding.global_id,
            instance: self.binding.instance,
            total: self.total,
            signature: hex::encode(signature),
        })
    }
}

/// A voucher with the payer's signature, as it travels between parties (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedVoucher {
    /// The channel's raw address (`0:<hex>`).
    pub channel: String,
    /// The network's global id the voucher pays on.
    pub global_id: i32,
    /// The channel instance the voucher pays on.
    pub instance: u64,
    /// nanoTON owed in all.
    pub total: u64,
    /// Ed25519 over the voucher cell's hash, hex.
    pub signature: String,
}

impl SignedVoucher {
    pub fn voucher(&self) -> Result<Voucher, TonError> {
        let channel = TonAddress::from_hex_str(&self.channel).map_err(|e| TonError::Unexpected {
            what: "voucher channel",
            expected: "a raw address like 0:<64 hex digits>".into(),
            found: format!("{:?} ({e})", self.channel),
        })?;
        let binding = ChannelBinding { global_id: self.global_id, instance: self.instance };
        Ok(Voucher { channel, binding, total: self.total })
    }

    fn signature_bytes(&self) -> Result<[u8; 64], TonError> {
        let bytes = hex::decode(&self.signature).ok().and_then(|b| <[u8; 64]>::try_from(b).ok());
        bytes.ok_or_else(|| TonError::Unexpected {
            what: "voucher signature",
            expected: "128 hex digits".into(),
            found: format!("{} characters", self.signature.len()),
        })
    }

    /// Checks that this voucher is for `channel` on the network and instance
    /// of `binding`, and signed by `payer_key`.
    pub fn verify(
        &self,
        channel: &TonAddress,
        binding: &ChannelBinding,
        payer_key: &[u8; 32],
    ) -> Result<Voucher, TonError> {
        let voucher = self.voucher()?;
        if &voucher.channel != channel {
            return Err(TonError::WrongChannel { expected: channel.to_hex(), found: voucher.channel.to_hex() });
        }
        if &voucher.binding != binding {
            return Err(TonError::Unexpected {
                what: "voucher binding",
                expected: format!("network {} and channel instance {}", binding.global_id, binding.instance),
                found: format!(
                    "network {} and channel instance {}",
                    voucher.binding.global_id, voucher.binding.instance
                ),
            });
        }
        let key = VerifyingKey::from_bytes(payer_key).map_err(|_| TonError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signature_bytes()?);
        key.verify(&voucher.hash()?, &signature).map_err(|_| TonError::BadSignature)?;
        Ok(voucher)
    }

    /// The payee's claim: pays it the voucher's total minus what it claimed before.
    pub fn claim_body(&self, query_id: u64) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_u32(32, op::CLAIM)?
            .store_u64(64, query_id)?
            .store_slice(&self.signature_bytes()?)?
            .store_child(self.voucher()?.to_cell()?)?;
        Ok(b.build()?)
    }
}

fn op_body(opcode: u32, query_id: u64) -> Result<Cell, TonError> {
    let mut b = CellBuilder::new();
    b.store_u32(32, opcode)?.store_u64(64, query_id)?;
    Ok(b.build()?)
}

/// Deposits the message's value, less [`crate::TOPUP_FEE`]. The first top-up, sent with the state init, deploys.
pub fn top_up_body(query_id: u64) -> Result<Cell, TonError> {
    op_body(op::TOP_UP, query_id)
}

/// The payer starts the dispute window.
pub fn request_close_body(query_id: u64) -> Result<Cell, TonError> {
    op_body(op::REQUEST_CLOSE, query_id)
}

/// The payer takes back what is left once the window has passed.
pub fn finalize_body(query_id: u64) -> Result<Cell, TonError> {
    op_body(op::FINALIZE, query_id)
}

/// `get_channel_state`, in the contract's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelState {
    #[serde(serialize_with = "ser_addr")]
    pub payer: TonAddress,
    #[serde(serialize_with = "ser_addr")]
    pub payee: TonAddress,
    #[serde(with = "hex::serde")]
    pub payer_key: [u8; 32],
    pub channel_id: u64,
    pub dispute_window: u32,
    pub deposited: u64,
    pub claimed: u64,
    /// Unix time the payer asked to close; 0 while open.
    pub closing_since: u32,
    pub closed: bool,
    pub balance: u64,
    /// The logical time of the first top-up; 0 before it.
    pub instance: u64,
    /// The network's global id, as the contract reads it.
    pub global_id: i32,
}

fn ser_addr<S: serde::Serializer>(a: &TonAddress, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_hex())
}

impl ChannelState {
    pub fn from_stack(stack: &[StackEntry]) -> Result<ChannelState, TonError> {
        if stack.len() != 12 {
            return Err(TonError::Unexpected {
                what: "get_channel_state",
                expected: "12 stack entries".into(),
                found: format!("{}", stack.len()),
            });
        }
        let key = stack[2].uint("payerKey")?;
        let mut payer_key = [0u8; 32];
        let bytes = key.to_bytes_be();
        if bytes.len() > 32 {
            return Err(TonError::Unexpected { what: "payerKey", expected: "256 bits".into(), found: key.to_string() });
        }
        payer_key[32 - bytes.len()..].copy_from_slice(&bytes);
        let small = |i: usize, what: &'static str, max: u64| -> Result<u64, TonError> {
            let v = coins_to_u64(&stack[i].uint(what)?)?;
            if v > max {
                return Err(TonError::Unexpected { what, expected: format!("at most {max}"), found: v.to_string() });
            }
            Ok(v)
        };
        let state = ChannelState {
            payer: stack[0].address("payer")?,
            payee: stack[1].address("payee")?,
            payer_key,
            channel_id: small(3, "channelId", u64::MAX)?,
            dispute_window: small(4, "disputeWindow", u32::MAX.into())? as u32,
            deposited: coins_to_u64(&stack[5].uint("deposited")?)?,
            claimed: coins_to_u64(&stack[6].uint("claimed")?)?,
            closing_since: small(7, "closingSince", u32::MAX.into())? as u32,
            closed: stack[8].boolean("closed")?,
            balance: coins_to_u64(&stack[9].uint("balance")?)?,
            instance: small(10, "instance", u64::MAX)?,
            global_id: stack[11].int32("globalId")?,
        };
        if state.claimed > state.deposited {
            return Err(TonError::Unexpected {
                what: "channel state",
                expected: "claimed at most deposited".into(),
                found: format!("claimed {} of {}", state.claimed, state.deposited),
            });
        }
        Ok(state)
    }

    /// The network and instance vouchers on this channel must name.
    pub fn binding(&self) -> ChannelBinding {
        ChannelBinding { global_id: self.global_id, instance: self.instance }
    }

    /// What a voucher for `total` would pay the payee now, or why it would be refused.
    pub fn claimable(&self, total: u64) -> Result<u64, &'static str> {
        if self.closed {
            Err("the channel is closed")
        } else if total <= self.claimed {
            Err("the voucher is not newer than the last claim")
        } else if total > self.deposited {
            Err("the voucher exceeds the channel's deposit")
        } else {
            Ok(total - self.claimed)
        }
    }

    /// Checks that the state is this channel's: an API answer about another contract is refused.
    pub fn check_params(&self, params: &ChannelParams) -> Result<(), TonError> {
        let found = (&self.payer, &self.payee, &self.payer_key, self.channel_id, self.dispute_window);
        let expected = (&params.payer, &params.payee, &params.payer_key, params.channel_id, params.dispute_window);
        if found != expected {
            return Err(TonError::Unexpected {
                what: "channel state",
                expected: format!("channel {} between {} and {}", params.channel_id, params.payer, params.payee),
                found: format!("channel {} between {} and {}", self.channel_id, self.payer, self.payee),
            });
        }
        Ok(())
    }
}

/// Reads `ArcCell` for readers of parsed messages.
pub fn voucher_from_claim_body(body: &ArcCell) -> Result<(Voucher, [u8; 64]), TonError> {
    let mut p = body.parser();
    let opcode = p.load_u32(32)?;
    if opcode != op::CLAIM {
        return Err(TonError::Unexpected {
            what: "claim opcode",
            expected: format!("{:#x}", op::CLAIM),
            found: format!("{opcode:#x}"),
        });
    }
    let _query = p.load_u64(64)?;
    let mut signature = [0u8; 64];
    p.load_slice(&mut signature)?;
    let voucher_cell = p.next_reference()?;
    let mut v = voucher_cell.parser();
    let tag = v.load_u32(32)?;
    if tag != op::VOUCHER {
        return Err(TonError::Unexpected {
            what: "voucher tag",
            expected: format!("{:#x}", op::VOUCHER),
            found: format!("{tag:#x}"),
        });
    }
    let channel = v.load_address()?;
    let global_id = v.load_i32(32)?;
    let instance = v.load_u64(64)?;
    let total = coins_to_u64(&v.load_coins()?)?;
    v.ensure_empty()?;
    Ok((Voucher { channel, binding: ChannelBinding { global_id, instance }, total }, signature))
}
