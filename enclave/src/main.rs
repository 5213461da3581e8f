fn main() -> anyhow::Result<()> {
    // The model comes from the static config (`[model]`) or --model.
    cocoon_enclave::run(None)
}
