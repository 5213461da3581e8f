//! `/init` of the guest image. It has no shell to fall back to: it mounts the
//! kernel file systems, loads the modules the image lists, checks the static
//! config against the `cocoon.config=sha256:…` value on the (measured) kernel
//! command line, and only then replaces itself with the enclave. Any failure
//! is printed on the console and the VM powers off: a worker that cannot
//! prove what it serves does not serve.

#![allow(unsafe_code)] // PID 1: mount, finit_module and reboot are system calls

mod cmdline;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use cmdline::BootArgs;

const CONFIG_DISK: &str = "/dev/vda";
const MODEL_DISK: &str = "/dev/vdb";
const CONFIG_FILE: &str = "/config/cocoon.toml";
const MODULE_LIST: &str = "/etc/modules";
const ENCLAVE: &str = "/bin/cocoon-enclave";
/// Largest static config read.
const MAX_CONFIG: u64 = 1 << 20;

fn say(msg: &str) {
    println!("cocoon-init: {msg}");
}

fn refuse(msg: &str) -> ! {
    println!("cocoon-init: REFUSING TO SERVE: {msg}");
    // SAFETY: plain syscalls; this is PID 1 and there is nothing left to do.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    std::process::exit(1)
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src, tgt, fs) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, std::ptr::null()) };
    if rc != 0 {
        return Err(format!("mount {fstype} {source} on {target}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Loads one module file (the kernel decompresses `.ko.xz`).
fn load_module(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let compressed = path.extension().is_some_and(|e| e == "xz");
    let flags = if compressed { 4 } else { 0 }; // MODULE_INIT_COMPRESSED_FILE
    let params = CString::default();
    // SAFETY: finit_module with an open fd and an empty parameter string.
    let rc =
        unsafe { libc::syscall(libc::SYS_finit_module, std::os::fd::AsRawFd::as_raw_fd(&f), params.as_ptr(), flags) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("{}: {e}", path.display()));
        }
    }
    Ok(())
}

fn wait_for(path: &str, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > within {
            return Err(format!("{path} did not appear within {} s", within.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn main() {
    let started = Instant::now();
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID).unwrap_or_else(|e| refuse(&e));
    mount("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC).unwrap_or_else(|e| refuse(&e));
    mount("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC).unwrap_or_else(|e| refuse(&e));
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| refuse(&format!("/proc/cmdline: {e}")));
    let args = BootArgs::parse(&cmdline).unwrap_or_else(|e| refuse(&e));

    // Modules in the listed order. The TEE drivers fail on the other vendor's
    // hardware (or on none): that is reported, not fatal; the enclave decides.
    let list = std::fs::read_to_string(MODULE_LIST).unwrap_or_default();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (optional, file) = match line.strip_prefix('?') {
            Some(f) => (true, f.trim()),
            None => (false, line),
        };
        match load_module(Path::new(file)) {
            Ok(()) => {}
            Err(e) if optional => say(&format!("optional module not loaded: {e}")),
            Err(e) => refuse(&format!("loading a module: {e}")),
        }
    }
    if Path::new("/sys/kernel/config").exists() {
        let _ = mount("configfs", "/sys/kernel/config", "configfs", 0);
    }

    wait_for(CONFIG_DISK, Duration::from_secs(30)).unwrap_or_else(|e| refuse(&format!("config disk: {e}")));
    mount(CONFIG_DISK, "/config", "erofs", libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC)
        .unwrap_or_else(|e| refuse(&e));
    let len =
        std::fs::metadata(CONFIG_FILE).map(|m| m.len()).unwrap_or_else(|e| refuse(&format!("{CONFIG_FILE}: {e}")));
    if len > MAX_CONFIG {
        refuse(&format!("{CONFIG_FILE} is {len} bytes; the limit is {MAX_CONFIG}"));
    }
    let config = std::fs::read(CONFIG_FILE).unwrap_or_else(|e| refuse(&format!("{CONFIG_FILE}: {e}")));
    let digest: [u8; 32] = Sha256::digest(&config).into();
    if digest != args.config_digest {
        refuse(&format!(
            "{CONFIG_FILE} has sha256 {}, but the measured command line says cocoon.config=sha256:{}",
            hex::encode(digest),
            hex::encode(args.config_digest)
        ));
    }
    say(&format!("config sha256:{} matches the command line", hex::encode(digest)));
    if Path::new(MODEL_DISK).exists() || wait_for(MODEL_DISK, Duration::from_secs(5)).is_ok() {
        mount(MODEL_DISK, "/model", "erofs", libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC)
            .unwrap_or_else(|e| refuse(&e));
    }
    say(&format!("starting the enclave after {} ms", started.elapsed().as_millis()));
    let mut cmd = std::process::Command::new(ENCLAVE);
    cmd.args(["--config", CONFIG_FILE, "--listen", &format!("vsock:{}", args.port), "--platform", &args.platform]);
    if args.insecure_simulated {
        cmd.arg("--insecure-simulated");
    }
    let err = cmd.exec();
    refuse(&format!("{ENCLAVE}: {err}"));
}
