//! `cocoon key`: the client's account key, the one `cocoon serve` signs with
//! and the channel commands sign with by default.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[arg(long, env = "COCOON_CLIENT_KEY")]
    key: Option<PathBuf>,
}

/// Prints the account key's public half, creating the key when missing.
pub fn run(args: KeyArgs) -> anyhow::Result<()> {
    let k = load_key(args.key)?;
    println!("{}", hex::encode(k.verifying_key().to_bytes()));
    Ok(())
}

/// The client's key file: `key` when given, else `~/.config/cocoon/client.key`.
pub fn key_path(key: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(k) = key {
        return Ok(k);
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("HOME is not set: give --key"))?;
    Ok(PathBuf::from(home).join(".config/cocoon/client.key"))
}

pub fn load_key(key: Option<PathBuf>) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let path = key_path(key)?;
    let (k, created) = cocoon_client::keyfile::load_or_create(&path)?;
    if created {
        eprintln!("created a new client key at {} (mode 0600)", path.display());
    }
    Ok(k)
}
