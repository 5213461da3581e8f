//! `cocoon`: verify a worker, chat with it through the sealed path.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use cocoon_attestation::{Policy, VerifiedWorker};
use cocoon_client::{ChatOptions, Worker};

#[derive(Debug, Parser)]
#[command(name = "cocoon", version, about = "Client and verifier for confidential inference workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// Policy file (TOML or JSON); the default accepts TDX and SEV-SNP only.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// DEVELOPMENT ONLY: accept simulated evidence, which proves nothing.
    #[arg(long)]
    insecure_simulated: bool,
}

impl PolicyArgs {
    fn load(&self) -> anyhow::Result<Policy> {
        let mut p = match &self.policy {
            Some(path) => Policy::from_file(path)?,
            None => Policy::default(),
        };
        if self.insecure_simulated {
            eprintln!(
                "WARNING: --insecure-simulated: simulated evidence will be accepted; it proves nothing about the worker."
            );
            p.allow_simulated = true;
        }
        Ok(p)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and verify a worker's evidence, and print what was verified.
    Attest {
        /// The worker's host shim, e.g. http://127.0.0.1:8080
        url: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Ask for fresh evidence bound to a new random nonce.
        #[arg(long)]
        nonce: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify the worker, send a sealed chat request, stream the answer, verify the receipt.
    Chat {
        url: String,
        /// The model to ask for.
        #[arg(long)]
        model: String,
        /// The question.
        prompt: String,
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        max_tokens: Option<u32>,
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

fn print_verified(v: &VerifiedWorker) {
    eprintln!("platform        {}", v.platform);
    eprintln!("image version   {}", v.claims.image_version);
    match &v.claims.model {
        Some(m) => eprintln!("model           {} (sha256 {})", m.id, hex::encode(&m.digest)),
        None => eprintln!("model           none loaded"),
    }
    eprintln!("config digest   {}", hex::encode(&v.claims.config_digest));
    eprintln!("receipt key     {}", hex::encode(v.receipt_key));
    for r in &v.rules {
        eprintln!("  [{}] {:<24} {}", if r.passed { "ok" } else { "FAIL" }, r.rule, r.detail);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attest { url, policy, nonce, json } => {
            let worker = Worker::attest(&url, &policy.load()?, nonce).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&worker.verified().summary())?);
            } else {
                print_verified(worker.verified());
                eprintln!("evidence accepted");
            }
        }
        Command::Chat { url, model, prompt, system, max_tokens, temperature, seed, policy } => {
            let worker = Worker::attest(&url, &policy.load()?, true).await.context("verifying the worker")?;
            eprintln!("-- verified worker (nothing was sent before this) --");
            print_verified(worker.verified());
            eprintln!("-- answer (sealed end to end, streamed) --");
            let opts = ChatOptions { model, system, max_tokens, temperature, seed };
            let mut stdout = std::io::stdout();
            let outcome = worker
                .chat(&prompt, &opts, |piece| {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                })
                .await?;
            println!();
            eprintln!("-- usage --");
            match &outcome.usage {
                Some(u) => eprintln!(
                    "prompt {} + completion {} = {} tokens (finish: {})",
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.total_tokens,
                    outcome.finish_reason.as_deref().unwrap_or("?")
                ),
                None => eprintln!("the worker reported no usage"),
            }
            let r = &outcome.receipt;
            eprintln!("-- receipt (COSE_Sign1, Ed25519, verified under the attested receipt key) --");
            eprintln!(
                "request sha256 {}  model {}  tokens {}+{}  issued {}",
                hex::encode(&r.request_hash),
                r.model_id,
                r.prompt_tokens,
                r.completion_tokens,
                r.issued_at
            );
            if let Some(u) = &outcome.usage
                && (u.prompt_tokens, u.completion_tokens) != (r.prompt_tokens, r.completion_tokens)
            {
                bail!("the receipt's token counts differ from the answer's usage");
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
