//! `cocoon chat`: one sealed request to one worker, verified first, its answer
//! streamed and its receipt checked, each step shown.

use std::io::Write;

use anyhow::{Context, bail};
use clap::Args;
use cocoon_client::{ChatOptions, Worker};

use crate::registry::RegistryArgs;
use crate::verifier::{VerifierArgs, print_verified};

#[derive(Debug, Args)]
pub struct ChatArgs {
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
    verifier: VerifierArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let ChatArgs { url, model, prompt, system, max_tokens, temperature, seed, verifier, registry } = args;
    let listed = match registry.watch().await? {
        Some(w) => Some(w.current()?),
        None => None,
    };
    let policy = match &listed {
        Some(l) => l.policy(&verifier.policy()?),
        None => verifier.policy()?,
    };
    let worker = Worker::attest_with(&url, &policy, &verifier.sources(), true).await.context("verifying the worker")?;
    if let Some(l) = &listed {
        l.check_worker(worker.verified()).context("the registry")?;
    }
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
    Ok(())
}
