//! The vendor roots every hardware verdict ends at (see `roots/README.md`).

use sev::certs::snp::builtin;

/// Intel SGX Root CA (DER): the root of DCAP quotes for SGX and TDX.
pub const INTEL_SGX_ROOT_CA: &[u8] = include_bytes!("../../roots/intel-sgx-root-ca.der");
/// SHA-256 of [`INTEL_SGX_ROOT_CA`], recorded separately so a changed file is caught.
pub const INTEL_SGX_ROOT_CA_SHA256: &str = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// An AMD EPYC generation with its pinned root (ARK) and the ASK AMD publishes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AmdGeneration {
    Milan,
    Genoa,
    Turin,
}

impl AmdGeneration {
    pub const ALL: [AmdGeneration; 3] = [AmdGeneration::Milan, AmdGeneration::Genoa, AmdGeneration::Turin];

    pub fn name(self) -> &'static str {
        match self {
            AmdGeneration::Milan => "Milan",
            AmdGeneration::Genoa => "Genoa",
            AmdGeneration::Turin => "Turin",
        }
    }

    /// The ARK, PEM.
    pub fn ark_pem(self) -> &'static [u8] {
        match self {
            AmdGeneration::Milan => builtin::milan::ARK,
            AmdGeneration::Genoa => builtin::genoa::ARK,
            AmdGeneration::Turin => builtin::turin::ARK,
        }
    }

    /// The ASK (VCEK intermediate), PEM: used when the evidence carries none.
    pub fn ask_pem(self) -> &'static [u8] {
        match self {
            AmdGeneration::Milan => builtin::milan::ASK,
            AmdGeneration::Genoa => builtin::genoa::ASK,
            AmdGeneration::Turin => builtin::turin::ASK,
        }
    }

    /// SHA-256 of the ARK's DER, pinned here independently of the `sev` crate.
    pub fn ark_sha256(self) -> &'static str {
        match self {
            AmdGeneration::Milan => "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
            AmdGeneration::Genoa => "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
            AmdGeneration::Turin => "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        }
    }
}

impl std::fmt::Display for AmdGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn der_of_pem(pem: &[u8]) -> Vec<u8> {
        sev::certs::snp::Certificate::from_pem(pem).unwrap().to_der().unwrap()
    }

    #[test]
    fn pinned_roots_have_the_recorded_fingerprints() {
        assert_eq!(hex::encode(Sha256::digest(INTEL_SGX_ROOT_CA)), INTEL_SGX_ROOT_CA_SHA256);
        for g in AmdGeneration::ALL {
            assert_eq!(hex::encode(Sha256::digest(der_of_pem(g.ark_pem()))), g.ark_sha256(), "{g}");
        }
    }
}
