fn main() -> anyhow::Result<()> {
    cocoon_proxy::cli::main()
}
