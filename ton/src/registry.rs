//! The registry (`contracts/src/registry.tolk`): the owner's messages and
//! readers for what its get-methods return. Every reader checks what it can:
//! an image's key must be the SHA-256 of its document, so a chain API that
//! lies about the registry is caught rather than trusted.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonlib_core::TonAddress;
use tonlib_core::cell::dict::predefined_readers::val_reader_ref_cell;
use tonlib_core::cell::{ArcCell, Cell, CellBuilder, CellParser, TonCellError};
use tonlib_core::tlb_types::block::state_init::StateInit;
use tonlib_core::tlb_types::tlb::TLB;

use crate::{TonError, code, op, snake};

/// Reference-values documents longer than this are refused (they are a few KiB).
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// A proxy's endpoint URL.
pub const MAX_ENDPOINT: usize = 2048;

/// The registry's `Storage` at deployment: an owner and empty lists.
pub fn initial_data(owner: &TonAddress) -> Result<Cell, TonError> {
    let mut b = CellBuilder::new();
    b.store_address(owner)?.store_bit(false)?.store_bit(false)?.store_bit(false)?;
    Ok(b.build()?)
}

pub fn state_init(owner: &TonAddress) -> Result<Cell, TonError> {
    Ok(StateInit::new(code::registry(), Arc::new(initial_data(owner)?)).to_cell()?)
}

pub fn address(owner: &TonAddress) -> Result<TonAddress, TonError> {
    Ok(TonAddress::derive(0, code::registry(), Arc::new(initial_data(owner)?))?)
}

/// A proxy as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEntry {
    /// Where clients' channels pay.
    pub wallet: TonAddress,
    pub commission_ppm: u32,
    pub endpoint: String,
}

impl ProxyEntry {
    pub fn to_cell(&self) -> Result<Cell, TonError> {
        let mut b = CellBuilder::new();
        b.store_address(&self.wallet)?
            .store_u32(32, self.commission_ppm)?
            .store_child(snake::encode(self.endpoint.as_bytes())?)?;
        Ok(b.build()?)
    }

    pub fn from_cell(cell: &Cell) -> Result<ProxyEntry, TonError> {
        let mut p = cell.parser();
        let wallet = p.load_address()?;
        let commission_ppm = p.load_u32(32)?;
        let endpoint = snake::decode(p.next_reference()?.as_ref(), MAX_ENDPOINT)?;
        p.ensure_empty()?;
        let endpoint = String::from_utf8(endpoint).map_err(|_| TonError::Unexpected {
            what: "proxy endpoint",
            expected: "UTF-8".into(),
            found: "other bytes".into(),
        })?;
        Ok(ProxyEntry { wallet, commission_ppm, endpoint })
    }
}

fn head(opcode: u32, query_id: u64) -> Result<CellBuilder, TonError> {
    let mut b = CellBuilder::new();
    b.store_u32(32, opcode)?.store_u64(64, query_id)?;
    Ok(b)
}

/// The owner lists a reference-values document, keyed by its SHA-256.
pub fn add_image_body(document: &[u8], query_id: u64) -> Result<Cell, TonError> {
    if document.len() > MAX_DOCUMENT {
        return Err(TonError::Unexpected {
            what: "reference-values document",
            expected: format!("at most {MAX_DOCUMENT} bytes"),
            found: format!("{} bytes", document.len()),
        });
    }
    let digest: [u8; 32] = Sha256::digest(document).into();
    let mut b = head(op::ADD_IMAGE, query_id)?;
    b.store_slice(&digest)?.store_child(snake::encode(document)?)?;
    Ok(b.build()?)
}

pub fn remove_image_body(digest: &[u8; 32], query_id: u64) -> Result<Cell, TonError> {
    let mut b = head(op::REMOVE_IMAGE, query_id)?;
    b.store_slice(digest)?;
    Ok(b.build()?)
}

pub fn add_model_body(digest: &[u8; 32], query_id: u64) -> Result<Cell, TonError> {
    let mut b = head(op::ADD_MODEL, query_id)?;
    b.store_slice(digest)?;
    Ok(b.build()?)
}

pub fn remove_model_body(digest: &[u8; 32], query_id: u64) -> Result<Cell, TonError> {
    let mut b = head(op::REMOVE_MODEL, query_id)?;
    b.store_slice(digest)?;
    Ok(b.build()?)
}

pub fn add_proxy_body(key: &[u8; 32], entry: &ProxyEntry, query_id: u64) -> Result<Cell, TonError> {
    let mut b = head(op::ADD_PROXY, query_id)?;
    b.store_slice(key)?.store_child(entry.to_cell()?)?;
    Ok(b.build()?)
}

pub fn remove_proxy_body(key: &[u8; 32], query_id: u64) -> Result<Cell, TonError> {
    let mut b = head(op::REMOVE_PROXY, query_id)?;
    b.store_slice(key)?;
    Ok(b.build()?)
}

pub fn change_owner_body(owner: &TonAddress, query_id: u64) -> Result<Cell, TonError> {
    let mut b = head(op::CHANGE_OWNER, query_id)?;
    b.store_address(owner)?;
    Ok(b.build()?)
}

/// Entries a registry list may have before the reader refuses it.
pub const MAX_ENTRIES: usize = 100_000;

fn read_map<V>(
    root: Option<&ArcCell>,
    val: fn(&mut CellParser) -> Result<V, TonCellError>,
) -> Result<Vec<([u8; 32], V)>, TonError> {
    let Some(root) = root else { return Ok(Vec::new()) };
    crate::dict::read_256(root, MAX_ENTRIES, &val)
}

/// `get_images`: each document, checked against its key.
pub fn images_from(root: Option<&ArcCell>) -> Result<BTreeMap<[u8; 32], Vec<u8>>, TonError> {
    let mut out = BTreeMap::new();
    for (key, cell) in read_map(root, val_reader_ref_cell)? {
        let document = snake::decode(&cell, MAX_DOCUMENT)?;
        let digest: [u8; 32] = Sha256::digest(&document).into();
        if digest != key {
            return Err(TonError::Unexpected {
                what: "registry image",
                expected: format!("a document hashing to its key {}", hex::encode(key)),
                found: format!("one hashing to {}", hex::encode(digest)),
            });
        }
        out.insert(key, document);
    }
    Ok(out)
}

/// `get_models`: the allowed model digests.
pub fn models_from(root: Option<&ArcCell>) -> Result<Vec<[u8; 32]>, TonError> {
    let mut keys: Vec<[u8; 32]> = read_map(root, |p| p.load_bit())?.into_iter().map(|(k, _)| k).collect();
    keys.sort();
    Ok(keys)
}

/// `get_proxies`: proxies by account key.
pub fn proxies_from(root: Option<&ArcCell>) -> Result<BTreeMap<[u8; 32], ProxyEntry>, TonError> {
    read_map(root, val_reader_ref_cell)?.into_iter().map(|(k, cell)| Ok((k, ProxyEntry::from_cell(&cell)?))).collect()
}
