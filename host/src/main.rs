fn main() -> anyhow::Result<()> {
    cocoon_host::cli::run()
}
