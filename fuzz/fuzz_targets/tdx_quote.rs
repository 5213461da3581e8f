//! A TDX quote from outside: parsing, the PCCS key, and full verification with
//! the real collateral at a time inside its window.
#![no_main]

use std::sync::OnceLock;

use cocoon_attestation::tdx::{self, TdxCollateral};
use libfuzzer_sys::fuzz_target;

fn collateral() -> &'static TdxCollateral {
    static C: OnceLock<TdxCollateral> = OnceLock::new();
    C.get_or_init(|| {
        TdxCollateral::from_json(include_bytes!("../../attestation/tests/data/dcap-sample-collateral.json")).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = tdx::collateral_key(data);
    let _ = tdx::verify_quote(data, collateral(), 1_750_377_600);
});
