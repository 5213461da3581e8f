//! The TON side of COCOON's payments.
//!
//! The contracts live in `contracts/` (Tolk, tested on `@ton/sandbox`); this
//! crate builds the same cells in Rust with `tonlib-core`: a channel's state
//! init and address, cumulative vouchers and their Ed25519 signatures, the
//! messages each party sends, and readers for what the get-methods return.
//! The cross-stack tests hold both stacks to the same hashes and have the
//! contracts accept what Rust builds.
//!
//! Amounts are nanoTON in `u64`, as in the proxy's ledger.

pub mod actions;
pub mod boc;
pub mod channel;
pub mod code;
pub mod dict;
pub mod registry;
pub mod snake;
pub mod stack;
pub mod toncenter;
pub mod wallet;

pub use channel::{ChannelDescriptor, ChannelParams, ChannelState, SignedVoucher, Voucher};
pub use tonlib_core::TonAddress;
pub use tonlib_core::cell::{ArcCell, BagOfCells, Cell, CellBuilder};

/// Opcodes, as the Tolk sources declare them (`struct (0x...) Name`).
pub mod op {
    pub const VOUCHER: u32 = 0x636f7632;
    pub const TOP_UP: u32 = 0x746f7075;
    pub const CLAIM: u32 = 0x636c6169;
    pub const REQUEST_CLOSE: u32 = 0x636c6f73;
    pub const FINALIZE: u32 = 0x66696e61;
    pub const PAYOUT: u32 = 0x70617964;
    pub const ADD_IMAGE: u32 = 0x72696d61;
    pub const REMOVE_IMAGE: u32 = 0x72696d64;
    pub const ADD_MODEL: u32 = 0x726d6f61;
    pub const REMOVE_MODEL: u32 = 0x726d6f64;
    pub const ADD_PROXY: u32 = 0x72707261;
    pub const REMOVE_PROXY: u32 = 0x72707264;
    pub const CHANGE_OWNER: u32 = 0x726f776e;
}

/// What a top-up keeps for the channel's gas and storage (`TOPUP_FEE`).
pub const TOPUP_FEE: u64 = 10_000_000;

/// The contracts' exit codes, with what each means to the party that sent the message.
pub fn exit_code_meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        401 => "only the channel's payer may do this",
        402 => "only the channel's payee may claim",
        403 => "the voucher is for another channel",
        404 => "the voucher's signature is not the payer's",
        405 => "the voucher is not newer than the last claim",
        406 => "the voucher exceeds the channel's deposit",
        407 => "the channel is closing",
        408 => "the channel is not closing",
        409 => "the dispute window has not passed yet",
        410 => "the channel is closed",
        411 => "a top-up must carry more than its 0.01 TON fee",
        501 => "only the registry's owner may change it",
        0xffff => "the contract does not know this operation",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum TonError {
    #[error("building a cell: {0}")]
    Cell(#[from] tonlib_core::cell::TonCellError),
    #[error("malformed BOC: {0}")]
    Boc(String),
    #[error("{what}: expected {expected}, found {found}")]
    Unexpected { what: &'static str, expected: String, found: String },
    #[error("amount {0} nanoTON does not fit in 64 bits")]
    Amount(String),
    #[error("voucher signature does not verify under the payer's key")]
    BadSignature,
    #[error("voucher is for channel {found}, expected {expected}")]
    WrongChannel { expected: String, found: String },
}

/// Parses a single-root BOC, bounded in size.
pub fn parse_boc(bytes: &[u8], max_len: usize) -> Result<ArcCell, TonError> {
    if bytes.len() > max_len {
        return Err(TonError::Boc(format!("{} bytes, more than the {max_len} allowed", bytes.len())));
    }
    boc::check(bytes)?;
    check_crc(bytes)?;
    // The structure is checked above; a panic left in tonlib-core's parser on
    // input we did not foresee still becomes an error, not a crash.
    let parsed = std::panic::catch_unwind(|| BagOfCells::parse(bytes))
        .map_err(|_| TonError::Boc("the BOC parser failed on this input".into()))?;
    let boc = parsed.map_err(|e| TonError::Boc(e.to_string()))?;
    boc.single_root().map_err(|e| TonError::Boc(e.to_string()))
}

// tonlib-core parses a BOC without checking its CRC32C; a BOC that declares
// one (flag 0x40 after the generic magic) must carry the right one.
fn check_crc(bytes: &[u8]) -> Result<(), TonError> {
    const MAGIC: [u8; 4] = [0xb5, 0xee, 0x9c, 0x72];
    if bytes.len() < 5 || bytes[..4] != MAGIC || bytes[4] & 0x40 == 0 {
        return Ok(());
    }
    if bytes.len() < 9 {
        return Err(TonError::Boc("too short for its CRC32C".into()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let expected = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(body);
    let found = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    if expected != found {
        return Err(TonError::Boc(format!("CRC32C is {found:08x}, the content's is {expected:08x}")));
    }
    Ok(())
}

/// Serialises a cell as a BOC (with CRC32C, as wallets and toncenter send it).
pub fn to_boc(cell: &Cell) -> Result<Vec<u8>, TonError> {
    Ok(BagOfCells::from_root(cell.clone()).serialize(true)?)
}

pub(crate) fn coins_to_u64(v: &num_bigint::BigUint) -> Result<u64, TonError> {
    u64::try_from(v).map_err(|_| TonError::Amount(v.to_string()))
}

pub(crate) fn hash32(h: &tonlib_core::TonHash) -> [u8; 32] {
    h.as_slice().try_into().expect("a TON hash is 32 bytes")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::channel::{ChannelParams, ChannelState, voucher_from_claim_body};
    use crate::stack::{StackEntry, from_toncenter};
    use crate::{TonAddress, Voucher, parse_boc, to_boc};

    fn addr(b: u8) -> TonAddress {
        TonAddress::from_hex_str(&format!("0:{}", hex::encode([b; 32]))).unwrap()
    }

    fn params() -> ChannelParams {
        ChannelParams { payer: addr(1), payee: addr(2), payer_key: [3; 32], channel_id: 4, dispute_window: 5 }
    }

    fn stack(deposited: u64, claimed: u64) -> Vec<StackEntry> {
        let slice = |a: &TonAddress| {
            let mut b = tonlib_core::cell::CellBuilder::new();
            b.store_address(a).unwrap();
            StackEntry::Slice(std::sync::Arc::new(b.build().unwrap()))
        };
        let num = |v: u64| StackEntry::Num(v.into());
        let p = params();
        vec![
            slice(&p.payer),
            slice(&p.payee),
            StackEntry::Num(num_bigint::BigInt::from_bytes_be(num_bigint::Sign::Plus, &p.payer_key)),
            num(p.channel_id),
            num(p.dispute_window.into()),
            num(deposited),
            num(claimed),
            num(0),
            StackEntry::Num(0.into()),
            num(deposited - claimed.min(deposited)),
            num(77),
            StackEntry::Num((-239).into()),
        ]
    }

    #[test]
    fn a_channel_state_that_cannot_be_is_refused() {
        let good = ChannelState::from_stack(&stack(10, 3)).unwrap();
        good.check_params(&params()).unwrap();
        assert_eq!(good.claimable(5), Ok(2));
        assert_eq!(good.binding(), BINDING);
        // Claimed more than deposited: an API answer that lies.
        let err = ChannelState::from_stack(&stack(3, 10)).unwrap_err();
        assert!(err.to_string().contains("claimed at most deposited"), "{err}");
        // Another channel's state.
        let other = ChannelParams { channel_id: 99, ..params() };
        assert!(good.check_params(&other).is_err());
        // Too few entries, wrong types.
        assert!(ChannelState::from_stack(&stack(10, 3)[..9]).is_err());
        let mut wrong = stack(10, 3);
        wrong[0] = StackEntry::Null;
        assert!(ChannelState::from_stack(&wrong).unwrap_err().to_string().contains("payer"));
        let mut negative = stack(10, 3);
        negative[5] = StackEntry::Num((-1).into());
        assert!(ChannelState::from_stack(&negative).is_err());
        let mut network = stack(10, 3);
        network[11] = StackEntry::Num(num_bigint::BigInt::from(i64::from(i32::MAX) + 1));
        assert!(ChannelState::from_stack(&network).unwrap_err().to_string().contains("globalId"));
        let mut huge = stack(10, 3);
        huge[5] = StackEntry::Num(num_bigint::BigInt::from(u64::MAX) * 4);
        assert!(ChannelState::from_stack(&huge).is_err());
    }

    #[test]
    fn toncenter_stacks_that_do_not_parse_are_errors() {
        assert!(
            matches!(&from_toncenter(&json!([["num", "0x1f"]])).unwrap()[..], [StackEntry::Num(n)] if *n == 31.into())
        );
        assert!(
            matches!(&from_toncenter(&json!([["num", "-0x2"]])).unwrap()[..], [StackEntry::Num(n)] if *n == (-2).into())
        );
        for bad in [
            json!({}),
            json!([["num"]]),
            json!([["num", "31"]]),
            json!([["num", format!("0x{}", "f".repeat(100))]]),
            json!([["cell", {"bytes": "not base64!"}]]),
            json!([["cell", {"bytes": "AAAA"}]]),
            json!([["tuple", []]]),
            json!((0..100).map(|_| json!(["null", null])).collect::<Vec<_>>()),
        ] {
            assert!(from_toncenter(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_bocs_are_refused_with_a_reason() {
        let cell = Voucher { channel: addr(1), binding: BINDING, total: 5 }.to_cell().unwrap();
        let boc = to_boc(&cell).unwrap();
        assert_eq!(parse_boc(&boc, 4096).unwrap().cell_hash(), cell.cell_hash());
        for cut in 0..boc.len() {
            assert!(parse_boc(&boc[..cut], 4096).is_err(), "truncated at {cut}");
        }
        assert!(parse_boc(&boc, 10).unwrap_err().to_string().contains("more than the 10 allowed"));
        let mut flipped = boc.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(parse_boc(&flipped, 4096).is_err(), "CRC mismatch");
    }

    const BINDING: crate::channel::ChannelBinding = crate::channel::ChannelBinding { global_id: -239, instance: 77 };

    #[test]
    fn a_claim_body_reads_back_and_a_voucher_is_bound_to_its_channel_network_and_instance() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let channel = params().address().unwrap();
        let signed = Voucher { channel: channel.clone(), binding: BINDING, total: 42 }.sign(&key).unwrap();
        let body = std::sync::Arc::new(signed.claim_body(7).unwrap());
        let (v, sig) = voucher_from_claim_body(&body).unwrap();
        assert_eq!(v, Voucher { channel: channel.clone(), binding: BINDING, total: 42 });
        assert_eq!(hex::encode(sig), signed.signature);
        let pk = key.verifying_key().to_bytes();
        assert!(signed.verify(&channel, &BINDING, &pk).is_ok());
        assert!(matches!(signed.verify(&addr(9), &BINDING, &pk), Err(crate::TonError::WrongChannel { .. })));
        assert!(matches!(signed.verify(&channel, &BINDING, &[4; 32]), Err(crate::TonError::BadSignature)));
        // The same voucher on testnet, or on the channel deployed again: refused before any signature check.
        let testnet = crate::channel::ChannelBinding { global_id: -3, ..BINDING };
        let redeployed = crate::channel::ChannelBinding { instance: 78, ..BINDING };
        for other in [testnet, redeployed] {
            let e = signed.verify(&channel, &other, &pk).unwrap_err();
            assert!(e.to_string().contains("channel instance"), "{e}");
        }
        // Claiming it there would not verify either: the binding is signed.
        let mut moved = signed.clone();
        moved.global_id = -3;
        assert!(matches!(moved.verify(&channel, &testnet, &pk), Err(crate::TonError::BadSignature)));
        let mut tampered = signed.clone();
        tampered.total = 43;
        assert!(matches!(tampered.verify(&channel, &BINDING, &pk), Err(crate::TonError::BadSignature)));
        tampered.signature = "zz".into();
        assert!(tampered.verify(&channel, &BINDING, &pk).is_err());
        // A channel never funded has no instance to sign for.
        let unfunded = crate::channel::ChannelBinding { instance: 0, ..BINDING };
        assert!(Voucher { channel, binding: unfunded, total: 1 }.sign(&key).is_err());
    }
}
