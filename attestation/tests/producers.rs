//! The hardware producers against a temporary directory that behaves like the
//! kernel's configfs-tsm entry: `outblob` is a FIFO served by a "kernel" thread
//! that answers with a report of whatever `inblob` holds and bumps
//! `generation` the way the kernel does (including for a second writer).

#![allow(unsafe_code)] // mkfifo

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cocoon_attestation::configfs_tsm::TsmProducer;
use cocoon_attestation::detect::{TeePaths, hardware_producer};
use cocoon_attestation::sev_guest::build_cert_table;
use cocoon_attestation::{EvidenceProducer, snp};
use cocoon_protocol::Platform;

struct FakeKernel {
    root: PathBuf,
    entry: PathBuf,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `races`: how many requests see another writer slip in before the read.
fn fake_kernel(provider: &str, writes_per_request: u64, races: u32, aux: Option<Vec<u8>>) -> FakeKernel {
    static N: AtomicU32 = AtomicU32::new(0);
    let root = std::env::temp_dir()
        .join(format!("cocoon-tsm-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
        .join("report");
    let entry = root.join("cocoon-test");
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
    std::fs::write(entry.join("generation"), "0\n").unwrap();
    std::fs::write(entry.join("inblob"), b"").unwrap();
    std::fs::write(entry.join("privlevel"), b"0\n").unwrap();
    if let Some(aux) = aux {
        std::fs::write(entry.join("auxblob"), aux).unwrap();
    }
    let outblob = entry.join("outblob");
    let c = std::ffi::CString::new(outblob.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    let (e, s, n) = (entry.clone(), stop.clone(), served.clone());
    let thread = std::thread::spawn(move || {
        let mut generation = 0u64;
        loop {
            // A request starts with a 64-byte inblob; taking it (emptying the file)
            // keeps the next request apart from this one.
            let mut inblob = loop {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let b = std::fs::read(e.join("inblob")).unwrap();
                if b.len() == 64 {
                    std::fs::write(e.join("inblob"), b"").unwrap();
                    break b;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            // Blocks until the producer opens the FIFO: that is "reading outblob".
            let mut out = std::fs::OpenOptions::new().write(true).open(e.join("outblob")).unwrap();
            generation += writes_per_request;
            if n.load(Ordering::SeqCst) < races {
                // Another process wrote its own report data in between.
                generation += 1;
                inblob = vec![0xee; 64];
            }
            std::fs::write(e.join("generation.new"), format!("{generation}\n")).unwrap();
            std::fs::rename(e.join("generation.new"), e.join("generation")).unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            let _ = out.write_all(&[b"REPORT:".as_slice(), &inblob].concat());
        }
    });
    FakeKernel { root, entry, stop, served, thread: Some(thread) }
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(self.root.parent().unwrap());
    }
}

fn paths(root: &Path) -> TeePaths {
    TeePaths {
        tsm_root: root.to_path_buf(),
        tdx_device: root.join("no-tdx_guest"),
        sev_device: root.join("no-sev-guest"),
        tsm_entry: "cocoon-test".into(),
        ..TeePaths::default()
    }
}

#[test]
fn tdx_quote_through_configfs_tsm() {
    let k = fake_kernel("tdx_guest", 1, 0, None);
    let p = hardware_producer(None, &paths(&k.root)).unwrap();
    assert_eq!(p.platform(), Platform::Tdx);
    for d in [[1u8; 64], [2u8; 64]] {
        let ev = p.produce(&d).unwrap();
        assert_eq!(ev.quote_or_report, [b"REPORT:".as_slice(), &d].concat());
        assert!(ev.certificates.is_none());
    }
    assert_eq!(k.served.load(Ordering::SeqCst), 2);
    // Asking for the other platform explicitly does not take this entry.
    let e = hardware_producer(Some(Platform::SevSnp), &paths(&k.root)).err().unwrap().to_string();
    assert!(
        e.starts_with("evidence producer failed: no sev-snp TEE found (configfs-tsm serves tdx, not sev-snp;"),
        "{e}"
    );
}

#[test]
fn snp_report_with_auxblob_certificates_and_privlevel() {
    let vek = snp::certificates_from_pem_or_der(include_bytes!("data/milan-vcek.pem")).unwrap().remove(0);
    let ask = snp::certificates_from_pem_or_der(include_bytes!("data/milan-ask.pem")).unwrap().remove(0);
    let k = fake_kernel("sev_guest", 2, 0, Some(build_cert_table(&vek, &ask)));
    let p = hardware_producer(Some(Platform::SevSnp), &paths(&k.root)).unwrap();
    assert_eq!(p.platform(), Platform::SevSnp);
    let ev = p.produce(&[9; 64]).unwrap();
    assert_eq!(ev.quote_or_report, [b"REPORT:".as_slice(), &[9; 64]].concat());
    assert_eq!(ev.certificates.unwrap(), vec![vek, ask]);
    assert_eq!(std::fs::read_to_string(k.entry.join("privlevel")).unwrap(), "0");
}

#[test]
fn a_generation_race_is_retried_never_returned() {
    let k = fake_kernel("tdx_guest", 1, 2, None);
    let p = TsmProducer::open(&k.root, "cocoon-test").unwrap();
    let ev = p.produce(&[5; 64]).unwrap();
    assert_eq!(ev.quote_or_report, [b"REPORT:".as_slice(), &[5; 64]].concat(), "the raced answers were dropped");
    assert_eq!(k.served.load(Ordering::SeqCst), 3, "two raced attempts, then a clean one");

    let busy = fake_kernel("tdx_guest", 1, u32::MAX, None);
    let p = TsmProducer::open(&busy.root, "cocoon-test").unwrap();
    let e = p.produce(&[5; 64]).unwrap_err().to_string();
    assert!(e.contains("the generation changed during each of 8 attempts"), "{e}");
}

#[test]
fn no_tee_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("cocoon-no-tee-{}", std::process::id()));
    let e = hardware_producer(None, &paths(&dir)).err().unwrap().to_string();
    assert!(e.contains("no TEE found (no configfs-tsm at"), "{e}");
    assert!(e.contains("does not exist: not a TDX guest"), "{e}");
    assert!(e.contains("cannot be used"), "{e}");
    // An entry whose provider is something else is refused by name.
    let k = fake_kernel("arm_cca_guest", 1, 0, None);
    let e = TsmProducer::open(&k.root, "cocoon-test").err().unwrap().to_string();
    assert!(e.contains("provider \"arm_cca_guest\", expected tdx_guest or sev_guest"), "{e}");
}
