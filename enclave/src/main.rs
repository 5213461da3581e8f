fn main() -> anyhow::Result<()> {
    // The Burn engine is wired in by the engine crate's release; until then
    // the shipped enclave serves attestation and keys, and its API answers
    // "no model loaded".
    cocoon_enclave::run(None)
}
