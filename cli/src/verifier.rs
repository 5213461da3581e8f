//! `cocoon attest` and `cocoon verify-evidence`: a worker's evidence checked
//! under a policy, and what was verified printed for a person to read.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use cocoon_attestation::{
    Assessment, HardwareReport, Policy, ReferenceValues, RuleOutcome, VerifiedWorker, assess, parse_rfc3339,
    read_limited, rfc3339,
};
use cocoon_client::EndorsementSources;
use cocoon_client::http::HttpClient;
use cocoon_client::worker::{fetch_evidence, unix_now};
use cocoon_protocol::{Claims, limits};

/// The policy a worker's (or a proxy's) evidence is verified under, and where
/// its endorsements come from.
#[derive(Debug, Args)]
pub struct VerifierArgs {
    /// Policy file (TOML or JSON); the default accepts TDX and SEV-SNP only, with reference values.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Reference values a worker's measurements must match (the JSON `make measure` prints); repeatable.
    #[arg(long = "reference-values", value_name = "FILE")]
    reference_values: Vec<PathBuf>,
    /// DEVELOPMENT ONLY: accept simulated evidence and debug guests, which prove nothing.
    #[arg(long)]
    insecure_simulated: bool,
    /// TDX collateral JSON (PCK CRL, root CA CRL, TCB info, QE identity).
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// A PCCS to fetch TDX collateral from, e.g. http://pccs.local:8081.
    #[arg(long, env = "COCOON_PCCS_URL", value_name = "URL")]
    pccs: Option<String>,
    /// Where fetched collateral is kept until its next update (default ~/.cache/cocoon/collateral).
    #[arg(long, value_name = "DIR")]
    collateral_cache: Option<PathBuf>,
    /// SEV-SNP VCEK/VLEK and ASK certificates (PEM or DER) for reports that come without them.
    #[arg(long, value_name = "FILE")]
    snp_certs: Option<PathBuf>,
    /// CRLs and OCSP responses (DER or PEM) for the GPU attestation chains; repeatable.
    /// The policy's gpu.revocation says what certificates without them mean.
    #[arg(long = "gpu-revocation", value_name = "FILE")]
    gpu_revocation: Vec<PathBuf>,
}

impl VerifierArgs {
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let mut p = match &self.policy {
            Some(path) => Policy::from_file(path)?,
            None => Policy::default(),
        };
        for f in &self.reference_values {
            p.reference_values.push(ReferenceValues::from_file(f)?);
        }
        if self.insecure_simulated {
            eprintln!(
                "WARNING: --insecure-simulated: simulated evidence and debug guests will be accepted; \
                 they prove nothing about the worker."
            );
            p.allow_simulated = true;
            p.development = true;
        }
        Ok(p)
    }

    pub fn sources(&self) -> EndorsementSources {
        let home_cache = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cocoon/collateral"));
        EndorsementSources {
            collateral_file: self.collateral.clone(),
            pccs_url: self.pccs.clone(),
            cache_dir: self.collateral_cache.clone().or(home_cache),
            snp_certs: self.snp_certs.clone(),
            gpu_revocation: self.gpu_revocation.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The worker's host shim, e.g. http://127.0.0.1:8080
    url: String,
    #[command(flatten)]
    verifier: VerifierArgs,
    /// Ask for fresh evidence bound to a new random nonce.
    #[arg(long)]
    nonce: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyEvidenceArgs {
    file: PathBuf,
    #[command(flatten)]
    verifier: VerifierArgs,
    /// The nonce (hex) the evidence was requested with, if any.
    #[arg(long)]
    nonce: Option<String>,
    /// Verify as of this time (RFC 3339, e.g. 2025-06-20T00:00:00Z) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn attest(args: AttestArgs) -> anyhow::Result<()> {
    let AttestArgs { url, verifier, nonce, json } = args;
    let policy = verifier.policy()?;
    let http = HttpClient::default();
    let (evidence, nonce) = fetch_evidence(&http, &url, nonce).await?;
    let now = unix_now();
    let endorsements = verifier.sources().endorsements(&http, &evidence, now).await?;
    report(assess(&evidence, &policy, nonce.as_deref(), now, &endorsements), json)
}

pub async fn verify_evidence(args: VerifyEvidenceArgs) -> anyhow::Result<()> {
    let VerifyEvidenceArgs { file, verifier, nonce, at, json } = args;
    let policy = verifier.policy()?;
    let evidence = read_limited(&file, limits::MAX_EVIDENCE as u64)
        .map_err(|e| anyhow::anyhow!("{}: {e} (evidence documents)", file.display()))?;
    let nonce = nonce.map(|n| hex::decode(n.trim())).transpose().context("--nonce is not hex")?;
    let now = match &at {
        Some(t) => {
            parse_rfc3339(t).with_context(|| format!("--at {t:?}: expected RFC 3339, e.g. 2025-06-20T00:00:00Z"))?
        }
        None => unix_now(),
    };
    let endorsements = verifier.sources().endorsements(&HttpClient::default(), &evidence, now).await?;
    report(assess(&evidence, &policy, nonce.as_deref(), now, &endorsements), json)
}

fn print_claims(claims: &Claims) {
    eprintln!("image version   {}", claims.image_version);
    match &claims.model {
        Some(m) => eprintln!("model           {} (sha256 {})", m.id, hex::encode(&m.digest)),
        None => eprintln!("model           none loaded"),
    }
    eprintln!("config digest   {}", hex::encode(&claims.config_digest));
    eprintln!("receipt key     {}", hex::encode(&claims.receipt_key));
    eprintln!("keys issued     {}", rfc3339(claims.issued_at));
}

fn print_hardware(hw: &HardwareReport) {
    match hw {
        HardwareReport::Tdx(r) => {
            eprintln!("TCB status      {} {}", r.tcb_status, r.advisory_ids.join(" "));
            eprintln!("TEE TCB SVN     {}", hex::encode(r.tee_tcb_svn));
            eprintln!("TD attributes   {}{}", hex::encode(r.td_attributes), if r.debug() { " (DEBUG)" } else { "" });
            for (name, v) in
                [("MRTD", &r.mrtd), ("RTMR0", &r.rtmr0), ("RTMR1", &r.rtmr1), ("RTMR2", &r.rtmr2), ("RTMR3", &r.rtmr3)]
            {
                eprintln!("{name:<15} {}", hex::encode(v));
            }
        }
        HardwareReport::SevSnp(r) => {
            eprintln!("chip            AMD {} ({}), report v{}", r.generation, r.signing_key, r.version);
            eprintln!("measurement     {}", hex::encode(r.measurement));
            eprintln!("host data       {}", hex::encode(r.host_data));
            eprintln!("reported TCB    {}", r.reported_tcb);
            eprintln!(
                "current TCB     {}{}",
                r.current_tcb,
                if r.reported_tcb_behind_current { " (reported TCB is behind)" } else { "" }
            );
            eprintln!(
                "guest policy    {:#x} (debug {}, migration agent {}, SMT {}), VMPL {}",
                r.policy.raw, r.policy.debug_allowed, r.policy.migrate_ma_allowed, r.policy.smt_allowed, r.vmpl
            );
        }
        HardwareReport::Simulated => eprintln!("hardware        none: SIMULATED evidence"),
    }
}

fn print_rules(rules: &[RuleOutcome]) {
    for r in rules {
        eprintln!("  [{}] {:<28} {}", if r.passed { "ok" } else { "FAIL" }, r.rule, r.detail);
    }
}

pub fn print_verified(v: &VerifiedWorker) {
    eprintln!("platform        {}", v.platform());
    print_hardware(v.hardware());
    print_claims(v.claims());
    print_gpus(v.gpus());
    print_rules(v.rules());
}

/// The GPUs whose reports verified and passed the policy, like the CPU rows.
fn print_gpus(gpus: &[cocoon_attestation::nvidia::VerifiedGpu]) {
    for (i, g) in gpus.iter().enumerate() {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        eprintln!(
            "gpu {i}           {} {} ({}), driver {}, VBIOS {}, board {}",
            g.architecture,
            g.chip,
            g.attestation_key,
            or_unknown(&g.driver_version),
            or_unknown(&g.vbios_version),
            or_unknown(&g.board_id)
        );
    }
}

/// Prints an assessment and turns a refusal into an error.
fn report(a: Assessment, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&a.summary())?);
    } else {
        if let Some(p) = a.platform {
            eprintln!("platform        {p}");
        }
        if let Some(hw) = &a.hardware {
            print_hardware(hw);
        }
        if let Some(c) = &a.claims {
            print_claims(c);
        }
        print_gpus(&a.gpus);
        print_rules(&a.rules);
    }
    let accepted = a.passed();
    a.into_result().context("evidence refused")?;
    if !json && accepted {
        eprintln!("evidence accepted");
    }
    Ok(())
}
