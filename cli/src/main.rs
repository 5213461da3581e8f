//! `cocoon`: verify a worker, chat with it through the sealed path, run the
//! client runner, measure images, and the TON commands of clients, workers and
//! the registry's owner. Each subcommand is one function in its own module;
//! everything they do is `cocoon-client`'s (or `cocoon-ton`'s) library.

mod channel;
mod chat;
mod key;
mod market;
mod measure;
mod payouts;
mod registry;
mod serve;
mod sponsor;
mod verifier;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cocoon", version, about = "Client and verifier for confidential inference workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and verify a worker's evidence, and print what was verified.
    Attest(verifier::AttestArgs),
    /// Verify an evidence document saved to a file (CBOR, as `GET /v1/attestation` serves it).
    VerifyEvidence(verifier::VerifyEvidenceArgs),
    /// Recompute the launch measurements of an image for a static config: the
    /// reference values (JSON on stdout) a genuine worker's evidence must show.
    Measure(measure::MeasureArgs),
    /// GPU reference values from NVIDIA's reference integrity manifests
    /// (driver and VBIOS RIMs): each RIM's XML signature and signer chain are
    /// verified to the pinned NVIDIA RIM root, then its golden measurements are
    /// printed as JSON for a policy's `gpu.reference_value_files`.
    MeasureGpu(measure::MeasureGpuArgs),
    /// Verify the worker, send a sealed chat request, stream the answer, verify the receipt.
    Chat(chat::ChatArgs),
    /// Run the client runner: an OpenAI-compatible API on loopback that routes
    /// through a proxy (or to one worker), verifies, seals, pays and streams.
    Serve(serve::ServeArgs),
    /// A TON wallet of the client's key (or a mnemonic): its address and balance.
    #[command(subcommand)]
    Wallet(channel::WalletCommand),
    /// Payment channels on TON: open, top up, sign vouchers, claim, close.
    #[command(subcommand)]
    Channel(channel::ChannelCommand),
    /// The network's registry on TON: allowed images, models and proxies.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// A worker's pay: fetch the proxy's newest voucher for this wallet, keep it
    /// durably, list what is held and claim it on chain.
    Payouts(payouts::PayoutsArgs),
    /// What a proxy's workers charge, per model: the lowest, median and
    /// highest price, with the capacity and load at each.
    Market(market::MarketArgs),
    /// Print the client's account key (the public key a proxy credits), creating it if needed.
    Key(key::KeyArgs),
    /// An app's sponsor: sign the charge authorisations of its Telegram users'
    /// sealed requests (their hashes only), within per-user quotas.
    Sponsor(sponsor::SponsorArgs),
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Attest(args) => verifier::attest(args).await,
        Command::VerifyEvidence(args) => verifier::verify_evidence(args).await,
        Command::Measure(args) => measure::measure(args),
        Command::MeasureGpu(args) => measure::measure_gpu(args),
        Command::Chat(args) => chat::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Wallet(cmd) => channel::run_wallet(cmd).await,
        Command::Channel(cmd) => channel::run_channel(cmd).await,
        Command::Registry(cmd) => registry::run(cmd).await,
        Command::Payouts(args) => payouts::run(args).await,
        Command::Key(args) => key::run(args),
        Command::Market(args) => market::run(args).await,
        Command::Sponsor(args) => sponsor::run(args).await,
    }
}

fn main() -> std::process::ExitCode {
    cocoon_runtime::init_logging("warn");
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
