//! Ed25519 account keys kept in files only their owner can read.
//!
//! A client's key is its account at a proxy (and later its payment-channel
//! key); a proxy's key is its account and signs its terms. The file holds the
//! 32-byte seed in hex. It is created with mode 0600 and refused when anyone
//! but the owner may read it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is readable by others (mode {mode:o}); expected 0600: run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: expected 64 hex digits (an Ed25519 seed), found {found}")]
    Malformed { path: PathBuf, found: String },
}

/// Loads the key at `path`, creating a new random one (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    match std::fs::metadata(path) {
        Ok(_) => load(path).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map(|k| (k, true)),
        Err(source) => Err(KeyFileError::Io { path: path.into(), source }),
    }
}

/// Refuses a secret file (a key, a mnemonic) that anyone but its owner may read.
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Io { path: path.into(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.into(), mode });
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.into(), source };
    check_private(path)?;
    let text = cocoon_attestation::read_limited(path, 256).map_err(|r| io(std::io::Error::other(r)))?;
    let text = String::from_utf8_lossy(&text);
    let seed: [u8; 32] = hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
        KeyFileError::Malformed { path: path.into(), found: format!("{} characters", text.trim().len()) }
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn create(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.into(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system's random source failed");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(format!("{}\n", hex::encode(seed)).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_reloaded_and_refused_when_others_can_read() {
        let dir = std::env::temp_dir().join(format!("cocoon-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/client.key");
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.to_bytes(), key.to_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Permissions { mode: 0o644, .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "nothex").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
