//! Wallets, the `cocoon` CLI against a chain, and channels, for tests on the
//! local emulated chain.

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_ton::TonAddress;
use ed25519_dalek::SigningKey;

use super::{key_file, workspace_bin};

pub const TON: u64 = 1_000_000_000;

/// A 0600 seed file and the address of its key's v4R2 wallet.
pub fn wallet_key(dir: &Path, name: &str, seed: u8) -> (PathBuf, TonAddress) {
    let public = SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes();
    (key_file(dir, name, seed), cocoon_ton::wallet::address_of(&public).unwrap())
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `cocoon` CLI with `args`, talking to the chain at `api`.
pub fn cocoon_cmd(api: &str, args: &[&str]) -> Command {
    let mut c = Command::new(workspace_bin("cocoon"));
    c.args(args).env("COCOON_TON_API", api);
    c
}

/// `cocoon channel open` from the wallet of `key` to `payee`, written to `out`.
pub fn open_channel(api: &str, key: &Path, payee: &TonAddress, ton: &str, window: u32, out: &Path) {
    run_ok(
        cocoon_cmd(api, &["channel", "open", "--payee", &payee.to_hex(), "--amount", ton])
            .args(["--dispute-window", &window.to_string(), "--key"])
            .arg(key)
            .arg("--out")
            .arg(out),
    );
}

/// What the runner has promised through the channel in `channel` (its `.paid` file), nanoTON.
pub fn paid_through(channel: &Path) -> u64 {
    match std::fs::read(format!("{}.paid", channel.display())) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["total"].as_u64().unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("{}.paid: {e}", channel.display()),
    }
}
