//! Processes the benchmarks start: release binaries, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary built with `--release`, next to the running benchmark.
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(bin.exists(), "{} missing: run `cargo build --release --workspace --bins`", bin.display());
    bin
}

/// Starts `cmd` with its output discarded and only errors logged; panics naming `what`.
pub fn spawn_quiet(cmd: &mut Command, what: &str) -> Proc {
    Proc(
        cmd.env("COCOON_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}")),
    )
}
