//! `cocoon market`: what a proxy's workers charge, per model.

use anyhow::{Context, bail};
use clap::Args;
use cocoon_client::http::{HttpClient, join};
use cocoon_protocol::proxy_api::{Market, PricePoint};

#[derive(Debug, Args)]
pub struct MarketArgs {
    /// The proxy, e.g. http://proxy.example:8090
    #[arg(long)]
    proxy: String,
    /// Print the proxy's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Fetches `GET /v1/market` and prints, per model, the lowest, median and
/// highest price with the capacity and load at each.
pub async fn run(args: MarketArgs) -> anyhow::Result<()> {
    let http = HttpClient::default();
    let (status, body) = http.get(join(&args.proxy, "/v1/market")?, 1 << 20).await?;
    if !status.is_success() {
        bail!("{} answered {status}: {}", args.proxy, String::from_utf8_lossy(&body).trim());
    }
    let market: Market = serde_json::from_slice(&body).with_context(|| format!("{}'s market", args.proxy))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&market)?);
        return Ok(());
    }
    let t = market.typical_request;
    println!(
        "prices in nanoTON per 1,000 prompt / completion tokens; cost of a typical request of {} + {} tokens, \
         commission excluded",
        t.prompt_tokens, t.completion_tokens
    );
    if market.models.is_empty() {
        println!("no worker is up");
    }
    for m in &market.models {
        println!();
        println!("{}: {} workers, {} of {} request slots in use", m.model, m.workers, m.in_flight, m.capacity);
        println!(
            "  {:<8} {:>14} {:>14} {:>14} {:>8} {:>10}",
            "", "prompt", "completion", "typical cost", "workers", "in use"
        );
        for (name, p) in [("lowest", &m.lowest), ("median", &m.median), ("highest", &m.highest)] {
            print_point(name, p);
        }
    }
    Ok(())
}

fn print_point(name: &str, p: &PricePoint) {
    println!(
        "  {name:<8} {:>14} {:>14} {:>14} {:>8} {:>10}",
        p.prices.prompt_per_1k.0,
        p.prices.completion_per_1k.0,
        p.typical_cost.0,
        p.workers,
        format!("{}/{}", p.in_flight, p.capacity)
    );
}
