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
pub mod channel;
pub mod code;
pub mod registry;
pub mod snake;
pub mod stack;
pub mod toncenter;
pub mod wallet;

pub use channel::{ChannelParams, ChannelState, SignedVoucher, Voucher};
pub use tonlib_core::TonAddress;
pub use tonlib_core::cell::{ArcCell, BagOfCells, Cell, CellBuilder};

/// Opcodes, as the Tolk sources declare them (`struct (0x...) Name`).
pub mod op {
    pub const VOUCHER: u32 = 0x636f7631;
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
    let boc = BagOfCells::parse(bytes).map_err(|e| TonError::Boc(e.to_string()))?;
    boc.single_root().map_err(|e| TonError::Boc(e.to_string()))
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
