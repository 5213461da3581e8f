//! The contracts' compiled code, embedded from `contracts/compiled/` (committed,
//! checked against the Tolk sources by the contract tests).

use std::sync::OnceLock;

use serde::Deserialize;
use tonlib_core::cell::ArcCell;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    code_boc64: String,
    code_hash_hex: String,
}

fn load(json: &str) -> ArcCell {
    let artifact: Artifact = serde_json::from_str(json).expect("contracts/compiled/*.json is valid");
    let boc = tonlib_core::cell::BagOfCells::parse_base64(&artifact.code_boc64).expect("compiled code is a BOC");
    let cell = boc.single_root().expect("compiled code has one root");
    assert_eq!(
        hex::encode_upper(cell.cell_hash().as_slice()),
        artifact.code_hash_hex.to_uppercase(),
        "compiled code hashes to its recorded hash"
    );
    cell
}

pub fn payment_channel() -> ArcCell {
    static CODE: OnceLock<ArcCell> = OnceLock::new();
    CODE.get_or_init(|| load(include_str!("../../contracts/compiled/payment_channel.json"))).clone()
}

pub fn registry() -> ArcCell {
    static CODE: OnceLock<ArcCell> = OnceLock::new();
    CODE.get_or_init(|| load(include_str!("../../contracts/compiled/registry.json"))).clone()
}
