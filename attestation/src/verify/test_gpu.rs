//! GPU reports the tests sign themselves, under the test chain in
//! `tests/data/gpu-test` (made by its `make.sh`: a Blackwell-shaped chain,
//! leaf "GB20X A01 GSP FMC LF", whose key is kept there). They carry what no
//! real sample here has: a CHIP_INFO field, padding, a nonce of the tests'
//! choosing. The verifier checks them with `*_under(.., root())`; the real
//! entry points pin NVIDIA's root and refuse them.

use p384::ecdsa::signature::Signer;

/// A time inside the test chain's validity (2030-01-01).
pub(crate) const AT: u64 = 1_893_456_000;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/gpu-test/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The chain, leaf first, as DER.
pub(crate) fn chain() -> Vec<Vec<u8>> {
    crate::nvidia::chain_from_pem(&data("chain.pem")).unwrap()
}

/// The test root (DER), the last certificate of [`chain`].
pub(crate) fn root() -> Vec<u8> {
    chain().pop().unwrap()
}

/// A report for `nonce` with one measurement block and these opaque fields
/// (type, value), signed by the test leaf; `padding` follows the signature.
pub(crate) fn report(nonce: &[u8; 32], opaque: &[(u16, &[u8])], padding: &[u8]) -> Vec<u8> {
    let mut r = vec![0x11, 0xE0, 0x01, 0xFF];
    r.extend_from_slice(nonce);
    r.push(0);
    // MEASUREMENTS: one block of a 48-byte digest (55 bytes in all).
    r.extend_from_slice(&[0x11, 0x60, 0, 0, 1, 55, 0, 0]);
    r.extend_from_slice(&[1, 0x01, 51, 0, 0x01, 48, 0]);
    r.extend_from_slice(&[0xab; 48]);
    r.extend_from_slice(&[0x5a; 32]);
    let fields: Vec<u8> = opaque
        .iter()
        .flat_map(|(kind, v)| {
            let mut f = kind.to_le_bytes().to_vec();
            f.extend_from_slice(&(v.len() as u16).to_le_bytes());
            f.extend_from_slice(v);
            f
        })
        .collect();
    r.extend_from_slice(&(fields.len() as u16).to_le_bytes());
    r.extend_from_slice(&fields);
    let scalar = hex::decode(String::from_utf8(data("leaf.key.hex")).unwrap().trim()).unwrap();
    let key = p384::ecdsa::SigningKey::from_slice(&scalar).unwrap();
    let signature: p384::ecdsa::Signature = key.sign(&r);
    r.extend_from_slice(&signature.to_bytes());
    r.extend_from_slice(padding);
    r
}
