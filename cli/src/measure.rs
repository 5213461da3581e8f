//! `cocoon measure` and `cocoon measure-gpu`: the reference values a genuine
//! worker's evidence must show, computed from the image and from NVIDIA's RIMs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use cocoon_attestation::{parse_rfc3339, rfc3339};
use cocoon_client::worker::unix_now;
use cocoon_measurements::reference;

#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Image directory: vmlinuz, initrd.img, cmdline, OVMF.inteltdx.fd and/or OVMF.amdsev.fd.
    #[arg(long, default_value = "guest-image/out")]
    image: PathBuf,
    /// The static config the worker is launched with.
    #[arg(long)]
    config: PathBuf,
    /// vCPUs of the VM (SEV-SNP: one VMSA is measured per vCPU).
    #[arg(long, default_value_t = 4)]
    vcpus: u32,
    /// SEV-SNP vCPU model as given to QEMU's -cpu.
    #[arg(long, default_value = "EPYC-Milan")]
    vcpu_type: String,
    /// Guest RAM as given to QEMU's -m (MiB, or with a K/M/G/T suffix); TDX's RTMR1 depends on it.
    #[arg(long, default_value = "4G", value_parser = reference::parse_memory_size)]
    memory: u64,
    /// TDX RTMR0 observed on a reference boot of the same host stack (repeatable); left
    /// unconstrained without it, since it measures the host's ACPI tables.
    #[arg(long, value_parser = reference::parse_register)]
    tdx_rtmr0: Vec<[u8; 48]>,
}

#[derive(Debug, Args)]
pub struct MeasureGpuArgs {
    /// RIM files (SWID tags, as NVIDIA's RIM service serves them).
    #[arg(required = true)]
    rims: Vec<PathBuf>,
    /// Verify as of this time (RFC 3339) instead of now: RIM signers'
    /// certificates are short-lived, and an archived RIM verifies only
    /// at a time inside its signer's window.
    #[arg(long)]
    at: Option<String>,
}

/// Prints what was measured on stderr, for a person, and the reference values
/// as JSON on stdout, for a policy.
pub fn measure(args: MeasureArgs) -> anyhow::Result<()> {
    let MeasureArgs { image, config, vcpus, vcpu_type, memory, tdx_rtmr0 } = args;
    let started = std::time::Instant::now();
    let r = reference::measure(
        &reference::Image { dir: image },
        &config,
        &reference::VmShape { vcpus, vcpu_type, memory_bytes: memory, tdx_rtmr0 },
    )?;
    eprintln!("config digest       {}", r.config_digest);
    eprintln!("kernel command line {}", r.cmdline);
    if let Some(t) = &r.tdx {
        eprintln!("TDX MRTD (one pass) {}", t.mrtd[0]);
        eprintln!("TDX MRTD (two pass) {}", t.mrtd[1]);
        eprintln!("TDX RTMR1           {} ({} MiB)", t.rtmr1, t.memory_bytes >> 20);
        eprintln!("TDX RTMR2           {}", t.rtmr2);
        eprintln!("TDX event: CFV      {}", t.events.cfv);
        eprintln!("TDX event: kernel   {}", t.events.kernel_authenticode);
        eprintln!("TDX event: cmdline  {}", t.events.cmdline);
        eprintln!("TDX event: initrd   {}", t.events.initrd);
        if t.rtmr0.is_empty() {
            eprintln!("TDX RTMR0           not constrained (host ACPI tables; see README, --tdx-rtmr0)");
        }
        for v in &t.rtmr0 {
            eprintln!("TDX RTMR0 (given)   {v}");
        }
    }
    if let Some(s) = &r.sev_snp {
        eprintln!("SNP measurement     {} ({} x {})", s.measurement, s.vcpus, s.vcpu_type);
    }
    for a in &r.artifacts {
        eprintln!("sha256 {:<16} {} ({} bytes)", a.name, a.sha256, a.bytes);
    }
    eprintln!("computed in {:.2} s", started.elapsed().as_secs_f64());
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

/// Verifies each RIM to NVIDIA's root and prints its golden measurements.
pub fn measure_gpu(args: MeasureGpuArgs) -> anyhow::Result<()> {
    let at = match &args.at {
        Some(t) => {
            parse_rfc3339(t).with_context(|| format!("--at {t:?}: expected RFC 3339, e.g. 2024-01-01T00:00:00Z"))?
        }
        None => unix_now(),
    };
    let mut sets = Vec::new();
    for path in &args.rims {
        let bytes = cocoon_attestation::read_limited(path, cocoon_attestation::xml::MAX_DOCUMENT as u64)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let rim = cocoon_attestation::rim::verify_rim(&bytes, at)
            .with_context(|| format!("{}: not a valid NVIDIA RIM at {}", path.display(), rfc3339(at)))?;
        eprintln!(
            "{}: {} {} for {}, {} measurements, signed by {} (valid to {})",
            path.display(),
            rim.component,
            rim.version,
            rim.product,
            rim.measurements.len(),
            rim.signer,
            rfc3339(rim.signer_valid.1)
        );
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        sets.push(rim.reference_values(&bytes, name, at));
    }
    match sets.as_slice() {
        [one] => println!("{}", serde_json::to_string_pretty(one)?),
        many => println!("{}", serde_json::to_string_pretty(many)?),
    }
    Ok(())
}
