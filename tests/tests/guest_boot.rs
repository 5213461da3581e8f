//! The guest image booted in QEMU with software emulation: the guest sees a
//! real virtio-vsock device served by `vhost-device-vsock`, the host shim
//! reaches the enclave through its hybrid-vsock Unix socket, and a sealed chat
//! is answered by the model on the image's read-only disk, also after the
//! host rewrote that disk under the running guest (the enclave computes with
//! the bytes it read and hashed once). A config whose digest differs from the
//! command line's makes the guest refuse to serve.
//!
//! Runs when COCOON_IMAGE_DIR names the built image (`make test` and `make
//! image-test` set it), and then needs `qemu-system-x86_64` and
//! `vhost-device-vsock` (`.ci/run` installs them).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_attestation::Policy;
use cocoon_client::{ChatOptions, Worker};
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require(tool: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success();
    assert!(found, "{tool} is missing: .ci/run installs it (see README, Tests)");
}

/// QEMU with the serial console captured to a file.
fn boot(image: &Path, dir: &Path, tag: &str, vsock_socket: Option<&Path>, config: &Path) -> (Proc, PathBuf) {
    let log = dir.join(format!("{tag}-serial.log"));
    let mut cmd = Command::new(repo().join("guest-image/launch/qemu.sh"));
    cmd.env("IMAGE", image).env("CONFIG", config).env("MEM", "1536M").env("VCPUS", "2");
    if let Some(s) = vsock_socket {
        cmd.env("VSOCK_SOCKET", s);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{tag}-qemu.log"))).unwrap())
        .spawn()
        .expect("start qemu");
    (Proc { child }, log)
}

/// Waits until the serial log contains `needle`; the log on failure.
fn wait_serial(p: &mut Proc, log: &Path, needle: &str, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let mut text = String::new();
        let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut text));
        if text.contains(needle) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within || p.child.try_wait().unwrap().is_some() {
            return Err(format!(
                "no {needle:?} on the serial console after {:?}:\n{}",
                start.elapsed(),
                console_excerpt(&text)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first kernel fault report (a crash's cause; the tail shows only its
/// last frames) and the last lines of the console.
fn console_excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    let fault = ["Oops", "BUG:", "WARNING:", "traps:", "Kernel panic"];
    match lines.iter().position(|l| fault.iter().any(|f| l.contains(f))) {
        Some(first) if first + 25 < lines.len() => {
            format!("{}\n[…]\n{tail}", lines[first.saturating_sub(3)..first + 15].join("\n"))
        }
        _ => tail,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_boots_in_qemu_and_serves_through_vsock() {
    let Some(image) = std::env::var_os("COCOON_IMAGE_DIR").map(PathBuf::from) else {
        eprintln!("skipped: COCOON_IMAGE_DIR is not set (`make test` and `make image-test` set it)");
        return;
    };
    require("qemu-system-x86_64");
    require("vhost-device-vsock");
    assert!(image.join("initrd.img").exists(), "{} has no initrd.img: run `make image` first", image.display());
    let dir = temp_dir("guest-boot");
    let config = repo().join("guest-image/config/cocoon.toml");

    // A command line for another config: the guest must refuse and say why.
    let other = dir.join("other.toml");
    std::fs::write(&other, "# not the config on the disk\n").unwrap();
    let (mut vm, log) = boot(&image, &dir, "refuse", None, &other);
    wait_serial(&mut vm, &log, "REFUSING TO SERVE", Duration::from_secs(240)).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("but the measured command line says cocoon.config=sha256:"), "{text}");
    assert!(!text.contains("starting the enclave"), "{text}");
    drop(vm);

    // The real config, with a vhost-user vsock device.
    let vhost = dir.join("vhost.sock");
    let uds = dir.join("vsock.sock");
    let device = Proc {
        child: Command::new("vhost-device-vsock")
            .arg("--vm")
            .arg(format!("guest-cid=3,socket={},uds-path={}", vhost.display(), uds.display()))
            .stdout(std::fs::File::create(dir.join("vhost-device.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vhost-device-vsock"),
    };
    wait_until("the vhost-user socket", || vhost.exists());
    // A copy of the image, so that the host can rewrite its model disk below.
    let copy = dir.join("image");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&image).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    let started = Instant::now();
    let (mut vm, log) = boot(&copy, &dir, "serve", Some(&vhost), &config);
    let ready = wait_serial(&mut vm, &log, "enclave ready", Duration::from_secs(600)).unwrap();
    eprintln!("boot to ready: {:.1} s (software emulation)", ready.as_secs_f64());
    // The init starts the enclave only once the config matched; the kernel's own
    // console messages may land in the middle of any line, so look for the
    // match as the words that follow it rather than as one unbroken line.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("starting the enclave after"), "{text}");
    assert!(text.contains("matches the command") || text.contains(" command line"), "{text}");

    // Software emulation runs the model some 250 times slower than the host
    // (a decoding step takes about 5 s in the guest): prefilling this prompt's
    // 37 tokens took 110 to 140 s here, before and after the paged cache, so
    // the shim's default of 120 s without a byte would cut the answer off.
    // The host overwrites the second half of the model's disk under the running guest.
    {
        use std::io::{Seek, Write};
        let disk = copy.join("model.img");
        let len = std::fs::metadata(&disk).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(std::io::SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&vec![0x77; (len - len / 2) as usize]).unwrap();
        f.sync_all().unwrap();
    }
    let (_host, url) = start_host(&format!("vsock-mux:{}:4000", uds.display()), &["--idle-timeout", "600"]);
    let worker = Worker::attest(&url, &Policy::insecure_simulated(), true).await.unwrap();
    let model = worker.verified().claims().model.clone().expect("the image serves a model");
    assert_eq!(model.id, "SmolLM2-135M-Instruct");
    assert_eq!(hex::encode(&model.digest), "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    let opts =
        ChatOptions { model: model.id.clone(), max_tokens: Some(8), temperature: Some(0.0), ..Default::default() };
    let out = worker.chat("What is the capital of France?", &opts, |_| {}).await.unwrap();
    eprintln!("answer through the VM: {:?} ({:.1} s after start)", out.text, started.elapsed().as_secs_f64());
    assert!(out.text.contains("Paris"), "the answer came from the bytes that were hashed: {:?}", out.text);
    drop(device);
}
