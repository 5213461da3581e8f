//! `cocoon registry`: the network's registry contract, governed by its owner
//! (allowed worker images, model digests, proxies), and what it lists.
//!
//! The registry's address follows from its owner's wallet, so `--owner`
//! (or the owner's key) is all a reader needs. The first change deploys it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use cocoon_ton::registry::{self, ProxyEntry};
use cocoon_ton::{TonAddress, actions};
use sha2::{Digest, Sha256};

use crate::channel::{ChainArgs, WalletArgs, chain, parse_address as address, wallet};

/// The network's registry, whose lists a client applies on top of its own policy.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Use only proxies, worker images and models this registry contract lists
    /// (its address, as `cocoon registry show` prints it).
    #[arg(long, value_name = "ADDR")]
    registry: Option<String>,
    /// How often the registry is read again (seconds); a removal takes effect then.
    #[arg(long, default_value_t = 60, requires = "registry")]
    registry_refresh: u64,
    #[command(flatten)]
    chain: ChainArgs,
}

impl RegistryArgs {
    /// The chain API these arguments name (`--ton-api`), for what else needs it.
    pub fn chain(&self) -> anyhow::Result<cocoon_ton::toncenter::Toncenter> {
        chain(&self.chain)
    }

    /// The registry, read once (an error when it cannot be), when one is given.
    pub async fn watch(&self) -> anyhow::Result<Option<std::sync::Arc<cocoon_client::allowlist::Watched>>> {
        let Some(address) = &self.registry else { return Ok(None) };
        let address = cocoon_ton::channel::parse_address("--registry", address)?;
        let chain = chain(&self.chain)?;
        let every = std::time::Duration::from_secs(self.registry_refresh);
        let watched = cocoon_client::allowlist::Watched::start(chain, address, every)
            .await
            .with_context(|| format!("reading the registry {}", self.registry.as_deref().unwrap_or_default()))?;
        Ok(Some(watched))
    }
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// List what a registry allows (checked: each image's key is its document's SHA-256).
    Show {
        /// The registry's owner (its wallet address); the registry's address follows from it.
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        chain: ChainArgs,
        /// Print JSON (images as their reference-values documents).
        #[arg(long)]
        json: bool,
    },
    /// Allow a worker image: its reference-values document, as `make measure` prints it.
    AddImage {
        file: PathBuf,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Withdraw an image by its document's SHA-256 (hex).
    RemoveImage {
        digest: String,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Allow a model by its digest (the SHA-256 of its weights file, hex).
    AddModel {
        digest: String,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    RemoveModel {
        digest: String,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// List a proxy: its account key, the wallet clients pay, its commission and endpoint.
    AddProxy {
        /// The proxy's account key (hex Ed25519 public key, as its terms name it).
        #[arg(long)]
        account: String,
        /// The wallet clients' channels pay (default: the v4R2 wallet of the account key).
        #[arg(long)]
        proxy_wallet: Option<String>,
        #[arg(long)]
        commission_ppm: u32,
        #[arg(long)]
        endpoint: String,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    RemoveProxy {
        /// The proxy's account key (hex).
        account: String,
        #[command(flatten)]
        wallet: WalletArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

fn hex32(what: &str, text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(text.trim().trim_start_matches("sha256:"))
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{what}: expected 64 hex digits, found {text:?}"))
}

pub async fn run(cmd: RegistryCommand) -> anyhow::Result<()> {
    let lists = match cmd {
        RegistryCommand::Show { owner, chain: c, json } => {
            let owner = address(&owner)?;
            let at = registry::address(&owner)?;
            let Some(l) = actions::registry_lists(&chain(&c)?, &at).await? else {
                bail!("no registry of {owner} is deployed (it would be at {at})");
            };
            if json {
                let images: serde_json::Map<String, serde_json::Value> = l
                    .images
                    .iter()
                    .map(|(k, doc)| {
                        let v = serde_json::from_slice(doc)
                            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(doc).into()));
                        (hex::encode(k), v)
                    })
                    .collect();
                let proxies: serde_json::Map<String, serde_json::Value> = l
                    .proxies
                    .iter()
                    .map(|(k, p)| {
                        (
                            hex::encode(k),
                            serde_json::json!({"wallet": p.wallet.to_hex(), "commission_ppm": p.commission_ppm, "endpoint": p.endpoint}),
                        )
                    })
                    .collect();
                let models: Vec<String> = l.models.iter().map(hex::encode).collect();
                println!(
                    "{}",
                    serde_json::json!({"registry": at.to_hex(), "owner": l.owner.to_hex(), "images": images, "models": models, "proxies": proxies})
                );
            } else {
                print(&at, &l);
            }
            return Ok(());
        }
        RegistryCommand::AddImage { file, wallet: w, chain: c } => {
            let document = cocoon_attestation::read_limited(&file, registry::MAX_DOCUMENT as u64)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            serde_json::from_slice::<serde_json::Value>(&document)
                .with_context(|| format!("{} is not JSON (expected `make measure`'s output)", file.display()))?;
            let digest: [u8; 32] = Sha256::digest(&document).into();
            eprintln!("image sha256:{}", hex::encode(digest));
            let body = registry::add_image_body(&document, 0)?;
            actions::registry_change(&chain(&c)?, &wallet(&w)?, body, |l| l.images.contains_key(&digest)).await?
        }
        RegistryCommand::RemoveImage { digest, wallet: w, chain: c } => {
            let d = hex32("digest", &digest)?;
            let body = registry::remove_image_body(&d, 0)?;
            actions::registry_change(&chain(&c)?, &wallet(&w)?, body, |l| !l.images.contains_key(&d)).await?
        }
        RegistryCommand::AddModel { digest, wallet: w, chain: c } => {
            let d = hex32("digest", &digest)?;
            let body = registry::add_model_body(&d, 0)?;
            actions::registry_change(&chain(&c)?, &wallet(&w)?, body, |l| l.models.contains(&d)).await?
        }
        RegistryCommand::RemoveModel { digest, wallet: w, chain: c } => {
            let d = hex32("digest", &digest)?;
            let body = registry::remove_model_body(&d, 0)?;
            actions::registry_change(&chain(&c)?, &wallet(&w)?, body, |l| !l.models.contains(&d)).await?
        }
        RegistryCommand::AddProxy { account, proxy_wallet, commission_ppm, endpoint, wallet: w, chain: c } => {
            let key = hex32("account", &account)?;
            let proxy_wallet = match proxy_wallet {
                Some(a) => address(&a)?,
                None => cocoon_ton::wallet::address_of(&key)?,
            };
            if endpoint.len() > registry::MAX_ENDPOINT
                || !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                bail!("--endpoint: expected an http(s) URL of at most {} bytes", registry::MAX_ENDPOINT);
            }
            let entry = ProxyEntry { wallet: proxy_wallet, commission_ppm, endpoint };
            let body = registry::add_proxy_body(&key, &entry, 0)?;
            actions::registry_change(&chain(&c)?, &wallet(&w)?, body, |l| l.proxies.get(&key) == Some(&entry)).await?
        }
        RegistryCommand::RemoveProxy { account, wallet: w, chain: c } => {
            let key = hex32("account", &account)?;
            let body = registry::remove_proxy_body(&key, 0)?;
            actions::registry_change(&chain(&c)?, &wallet(&w)?, body, |l| !l.proxies.contains_key(&key)).await?
        }
    };
    print(&registry::address(&lists.owner)?, &lists);
    Ok(())
}

fn print(at: &TonAddress, l: &actions::RegistryLists) {
    println!("registry {} (owner {})", at.to_hex(), l.owner.to_hex());
    println!("images ({}):", l.images.len());
    for (k, doc) in &l.images {
        println!("  sha256:{}  {} bytes", hex::encode(k), doc.len());
    }
    println!("models ({}):", l.models.len());
    for m in &l.models {
        println!("  sha256:{}", hex::encode(m));
    }
    println!("proxies ({}):", l.proxies.len());
    for (k, p) in &l.proxies {
        println!(
            "  {}  wallet {}  commission {} ppm  {}",
            hex::encode(k),
            p.wallet.to_hex(),
            p.commission_ppm,
            p.endpoint
        );
    }
}
