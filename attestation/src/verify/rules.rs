//! The policy's rules over the verified hardware fields and the bound
//! claims: each evaluated, passed or not, so that a refusal lists every rule
//! the evidence broke.

use cocoon_protocol::Claims;

use super::gpu_checks::gpu_rule;
use super::{GpuCheck, HardwareReport, RuleOutcome};
use crate::Policy;
use crate::reference::{ReferenceValues, mismatch};
use crate::snp::SnpReport;
use crate::tdx::TdxReport;

/// Outcomes in the order the rules were checked.
#[derive(Default)]
struct Rules(Vec<RuleOutcome>);

impl Rules {
    fn check(&mut self, rule: &'static str, result: Result<String, String>) {
        let (passed, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.0.push(RuleOutcome { rule, passed, detail });
    }
}

/// `Ok(pass)` when `holds`, else `Err(fail)`.
fn rule(holds: bool, pass: impl FnOnce() -> String, fail: impl FnOnce() -> String) -> Result<String, String> {
    if holds { Ok(pass()) } else { Err(fail()) }
}

/// The policy's rules over verified hardware fields and bound claims. Public so
/// that policy decisions can be tested on real hardware reports.
pub fn policy_rules(
    policy: &Policy,
    claims: &Claims,
    hardware: &HardwareReport,
    fresh: bool,
    now: u64,
    gpus: &[GpuCheck],
) -> Vec<RuleOutcome> {
    let mut rules = Rules::default();
    if policy.require_nonce {
        rules.check(
            "require_nonce",
            rule(
                fresh,
                || "fresh evidence".into(),
                || "cached evidence, the policy wants evidence for the verifier's nonce".into(),
            ),
        );
    }
    match hardware {
        HardwareReport::Tdx(r) => {
            rules.check("debug", debug_rule(policy, r.debug(), "TD attributes have the DEBUG bit"));
            rules.check("reference_values", reference_rule(policy, claims, hardware));
            tdx_rules(&mut rules, policy, r);
        }
        HardwareReport::SevSnp(r) => {
            rules.check("debug", debug_rule(policy, r.debug(), "the guest policy allows debugging"));
            rules.check("reference_values", reference_rule(policy, claims, hardware));
            snp_rules(&mut rules, policy, r);
        }
        HardwareReport::Simulated => {}
    }
    claim_rules(&mut rules, policy, claims, now);
    if let Some(result) = gpu_rule(policy, gpus) {
        rules.check("gpu", result);
    }
    rules.0
}

/// The TCB status and advisories Intel's collateral gives, and the TEE's SVNs.
fn tdx_rules(rules: &mut Rules, policy: &Policy, r: &TdxReport) {
    let allowed = &policy.tdx.allowed_tcb_statuses;
    rules.check(
        "tdx.allowed_tcb_statuses",
        rule(
            allowed.contains(&r.tcb_status),
            || format!("{} is allowed", r.tcb_status),
            || format!("expected one of {allowed:?}, found {}", r.tcb_status),
        ),
    );
    if !policy.tdx.refused_advisories.is_empty() {
        let hit: Vec<_> = r.advisory_ids.iter().filter(|a| policy.tdx.refused_advisories.contains(a)).collect();
        rules.check(
            "tdx.refused_advisories",
            rule(
                hit.is_empty(),
                || "none of the refused advisories apply".into(),
                || format!("the platform is affected by {hit:?}"),
            ),
        );
    }
    if let Some(min) = &policy.tdx.min_tee_tcb_svn {
        let low: Vec<String> = r
            .tee_tcb_svn
            .iter()
            .zip(min)
            .enumerate()
            .filter(|(_, (have, want))| have < want)
            .map(|(i, (have, want))| format!("component {i}: {have} < {want}"))
            .collect();
        rules.check(
            "tdx.min_tee_tcb_svn",
            rule(low.is_empty(), || format!("{} meets the minimum", hex::encode(r.tee_tcb_svn)), || low.join(", ")),
        );
    }
}

/// The reported TCB, the guest's SVN and the guest policy's bits.
fn snp_rules(rules: &mut Rules, policy: &Policy, r: &SnpReport) {
    let p = &policy.sev_snp;
    if let Some(min) = &p.min_reported_tcb {
        let low = r.reported_tcb.shortfalls(min);
        rules.check(
            "sev_snp.min_reported_tcb",
            rule(
                low.is_empty(),
                || format!("{} meets {min}", r.reported_tcb),
                || format!("reported TCB below the minimum: {}", low.join(", ")),
            ),
        );
    }
    rules.check(
        "sev_snp.min_guest_svn",
        rule(
            r.guest_svn >= p.min_guest_svn,
            || format!("{} >= {}", r.guest_svn, p.min_guest_svn),
            || format!("expected at least {}, found {}", p.min_guest_svn, r.guest_svn),
        ),
    );
    rules.check(
        "sev_snp.allow_migration_agent",
        rule(
            !r.policy.migrate_ma_allowed || p.allow_migration_agent,
            || format!("migration agent allowed: {}", r.policy.migrate_ma_allowed),
            || "the guest policy allows a migration agent (MIGRATE_MA); the policy refuses it".into(),
        ),
    );
    rules.check(
        "sev_snp.allow_smt",
        rule(
            !r.policy.smt_allowed || p.allow_smt,
            || format!("SMT allowed: {}", r.policy.smt_allowed),
            || "the guest policy allows SMT; the policy refuses it".into(),
        ),
    );
    rules.check(
        "sev_snp.max_vmpl",
        rule(
            r.vmpl <= p.max_vmpl,
            || format!("VMPL {} <= {}", r.vmpl, p.max_vmpl),
            || format!("expected VMPL at most {}, found {}", p.max_vmpl, r.vmpl),
        ),
    );
}

/// The model, the config and the claims' age.
fn claim_rules(rules: &mut Rules, policy: &Policy, claims: &Claims, now: u64) {
    if let Some(want) = &policy.required_model_digest {
        let got = claims.model.as_ref().map(|m| hex::encode(&m.digest));
        rules.check(
            "required_model_digest",
            rule(
                got.as_deref() == Some(want.to_ascii_lowercase().as_str()),
                || want.clone(),
                || format!("expected {want}, found {}", got.clone().unwrap_or_else(|| "no model".into())),
            ),
        );
    }
    if !policy.allowed_config_digests.is_empty() {
        let got = hex::encode(&claims.config_digest);
        rules.check(
            "allowed_config_digests",
            rule(
                policy.allowed_config_digests.iter().any(|d| d.eq_ignore_ascii_case(&got)),
                || got.clone(),
                || format!("expected one of {:?}, found {got}", policy.allowed_config_digests),
            ),
        );
    }
    if let Some(max) = policy.max_evidence_age_secs {
        let age = now.saturating_sub(claims.issued_at);
        rules.check(
            "max_evidence_age_secs",
            rule(
                age <= max,
                || format!("issued {age} s ago (max {max} s)"),
                || format!("claims issued {age} s ago, the policy allows at most {max} s"),
            ),
        );
    }
}

fn debug_rule(policy: &Policy, debug: bool, what: &str) -> Result<String, String> {
    match (debug, policy.development) {
        (false, _) => Ok("not a debug guest".into()),
        (true, true) => Ok(format!("{what}; accepted by a development policy")),
        (true, false) => {
            Err(format!("{what}: the host can read the guest's memory; only a development policy accepts it"))
        }
    }
}

/// The evidence must match one whole set of reference values for its platform.
fn reference_rule(policy: &Policy, claims: &Claims, hardware: &HardwareReport) -> Result<String, String> {
    let applies = |r: &ReferenceValues| match hardware {
        HardwareReport::Tdx(_) => r.tdx.is_some(),
        HardwareReport::SevSnp(_) => r.sev_snp.is_some(),
        HardwareReport::Simulated => false,
    };
    let sets: Vec<(usize, &ReferenceValues)> =
        policy.reference_values.iter().enumerate().filter(|(_, r)| applies(r)).collect();
    if sets.is_empty() {
        return if policy.allow_any_measurement {
            Ok("NOT CHECKED: the policy has no reference values for this platform and allows any measurement".into())
        } else {
            Err("the policy has no reference values for this platform: add the output of `make measure` \
                 (--reference-values FILE) or, to inspect only, allow_any_measurement"
                .into())
        };
    }
    let mut misses = Vec::new();
    for (i, set) in sets {
        let miss = set_mismatch(set, claims, hardware);
        match miss {
            None => return Ok(format!("matches {}", set.label(i))),
            Some(m) => misses.push(format!("{}: {m}", set.label(i))),
        }
    }
    Err(misses.join("; "))
}

fn set_mismatch(set: &ReferenceValues, claims: &Claims, hardware: &HardwareReport) -> Option<String> {
    let fields: Vec<Option<String>> = match hardware {
        HardwareReport::Tdx(r) => {
            let t = set.tdx.as_ref()?;
            vec![
                mismatch("tdx.mrtd", &t.mrtd, &r.mrtd),
                mismatch("tdx.rtmr0", &t.rtmr0, &r.rtmr0),
                mismatch("tdx.rtmr1", &t.rtmr1, &r.rtmr1),
                mismatch("tdx.rtmr2", &t.rtmr2, &r.rtmr2),
                mismatch("tdx.rtmr3", &t.rtmr3, &r.rtmr3),
                mismatch("tdx.mr_config_id", &t.mr_config_id, &r.mr_config_id),
                mismatch("tdx.mr_owner", &t.mr_owner, &r.mr_owner),
                mismatch("tdx.mr_owner_config", &t.mr_owner_config, &r.mr_owner_config),
            ]
        }
        HardwareReport::SevSnp(r) => {
            let s = set.sev_snp.as_ref()?;
            vec![
                mismatch("sev_snp.measurement", &s.measurement, &r.measurement),
                mismatch("sev_snp.host_data", &s.host_data, &r.host_data),
                mismatch("sev_snp.id_key_digest", &s.id_key_digest, &r.id_key_digest),
            ]
        }
        HardwareReport::Simulated => return Some("simulated evidence has no measurements".into()),
    };
    let mut all = fields;
    all.push(mismatch("config_digest", &set.config_digest, &claims.config_digest));
    let misses: Vec<String> = all.into_iter().flatten().collect();
    (!misses.is_empty()).then(|| misses.join(", "))
}
