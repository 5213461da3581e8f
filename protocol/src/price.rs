//! Money on the wire: nanoTON amounts, a worker's attested prices, a proxy's
//! commission, and the integer arithmetic every party must agree on.
//!
//! The enclave, the proxy and the client runner each compute the same cost
//! from the same receipt, so the formulas live here and nowhere else:
//!
//! - worker cost = ceil((prompt × prompt price + completion × completion price) / 1000)
//! - commission  = floor(worker cost × commission ppm / 1 000 000)
//! - client charge = worker cost + commission

use serde::{Deserialize, Serialize};

/// An amount of TON in nanoTON (10⁻⁹ TON). Money is never a float.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NanoTon(pub u64);

impl NanoTon {
    pub const ZERO: NanoTon = NanoTon(0);

    pub fn saturating_add(self, other: NanoTon) -> NanoTon {
        NanoTon(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: NanoTon) -> NanoTon {
        NanoTon(self.0.saturating_sub(other.0))
    }
}

impl std::fmt::Display for NanoTon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} nanoTON", self.0)
    }
}

impl std::str::FromStr for NanoTon {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim();
        let digits = digits.strip_suffix("nanoTON").unwrap_or(digits).trim();
        digits.parse::<u64>().map(NanoTon).map_err(|e| format!("{s:?} is not a whole number of nanoTON: {e}"))
    }
}

/// A worker's prices, in nanoTON per 1,000 tokens. Part of its static config,
/// and so of its attested claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub prompt_per_1k: NanoTon,
    pub completion_per_1k: NanoTon,
}

impl std::fmt::Display for Prices {
    /// `PROMPT,COMPLETION` nanoTON per 1,000 tokens, as `--max-price-per-1k` takes them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.prompt_per_1k.0, self.completion_per_1k.0)
    }
}

impl std::str::FromStr for Prices {
    type Err = String;

    /// `PROMPT,COMPLETION`: nanoTON per 1,000 prompt and completion tokens.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, c) = s
            .split_once(',')
            .ok_or_else(|| format!("{s:?}: expected PROMPT,COMPLETION (nanoTON per 1,000 tokens each)"))?;
        let one = |v: &str| v.trim().parse::<NanoTon>().map_err(|e| format!("{s:?}: {e}"));
        Ok(Prices { prompt_per_1k: one(p)?, completion_per_1k: one(c)? })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("the prompt alone costs {prompt_cost}, more than the request's maximum of {max_cost}")]
    PromptOverBudget { prompt_cost: NanoTon, max_cost: NanoTon },
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Prices {
    /// Whether both prices are at or below `ceiling`'s.
    pub fn within(&self, ceiling: &Prices) -> bool {
        self.prompt_per_1k <= ceiling.prompt_per_1k && self.completion_per_1k <= ceiling.completion_per_1k
    }

    /// What `prompt` and `completion` tokens cost at these prices, rounded up.
    pub fn cost(&self, prompt: u32, completion: u32) -> NanoTon {
        let milli =
            prompt as u128 * self.prompt_per_1k.0 as u128 + completion as u128 * self.completion_per_1k.0 as u128;
        NanoTon(to_u64(milli.div_ceil(1000)))
    }

    /// The most completion tokens whose cost, with the prompt's, stays within `max_cost`.
    pub fn max_completion_tokens(&self, max_cost: NanoTon, prompt: u32) -> Result<u32, BudgetError> {
        let budget = max_cost.0 as u128 * 1000;
        let prompt_milli = prompt as u128 * self.prompt_per_1k.0 as u128;
        if prompt_milli > budget {
            return Err(BudgetError::PromptOverBudget { prompt_cost: self.cost(prompt, 0), max_cost });
        }
        if self.completion_per_1k.0 == 0 {
            return Ok(u32::MAX);
        }
        let left = (budget - prompt_milli) / self.completion_per_1k.0 as u128;
        Ok(u32::try_from(left).unwrap_or(u32::MAX))
    }
}

/// The most a request may cost at a worker's prices: the enclave caps the
/// completion so that the receipt's cost never exceeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostCap {
    pub prices: Prices,
    pub max_cost: NanoTon,
}

impl CostCap {
    pub fn max_completion_tokens(&self, prompt: u32) -> Result<u32, BudgetError> {
        self.prices.max_completion_tokens(self.max_cost, prompt)
    }
}

/// Parts per million that counts as the whole.
pub const PPM: u64 = 1_000_000;

/// A proxy's commission on top of the worker's cost, in parts per million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Commission {
    ppm: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("commission of {found} ppm is above the limit of {limit} ppm (100 %)")]
pub struct CommissionError {
    pub found: u64,
    pub limit: u64,
}

impl Commission {
    pub fn from_ppm(ppm: u64) -> Result<Self, CommissionError> {
        if ppm > PPM {
            return Err(CommissionError { found: ppm, limit: PPM });
        }
        Ok(Commission { ppm: ppm as u32 })
    }

    pub fn ppm(&self) -> u64 {
        self.ppm as u64
    }

    /// The proxy's share on a worker cost, rounded down.
    pub fn on(&self, worker_cost: NanoTon) -> NanoTon {
        NanoTon(to_u64(worker_cost.0 as u128 * self.ppm as u128 / PPM as u128))
    }

    /// What the client is charged for a worker cost.
    pub fn charge(&self, worker_cost: NanoTon) -> NanoTon {
        worker_cost.saturating_add(self.on(worker_cost))
    }

    /// The largest worker cost whose charge stays within `max_charge`: what the
    /// proxy tells the enclave (and the client runner seals) so that
    /// generation stops there.
    ///
    /// Closed form: `w = floor(max × 10⁶ / (10⁶ + ppm))` satisfies
    /// `w + w × ppm / 10⁶ ≤ max`, so its charge (with the commission rounded
    /// down) fits; rounding down the commission can leave room for at most a
    /// few more nanoTON, which the bounded loop takes. All in `u128`, so that
    /// nothing saturates near `u64::MAX` (a saturating charge made the old
    /// search run about 10¹⁸ times there).
    pub fn worker_budget(&self, max_charge: NanoTon) -> NanoTon {
        let (max, ppm, whole) = (max_charge.0 as u128, self.ppm as u128, PPM as u128);
        let charge = |w: u128| w + w * ppm / whole;
        let mut w = max * whole / (whole + ppm);
        // w + 1 overshoots once its exact charge passes max: at most three steps.
        while charge(w + 1) <= max {
            w += 1;
        }
        NanoTon(to_u64(w))
    }

    /// What a client who signed `max_charge` pays for an answer whose tokens
    /// cost `worker_cost` at the worker's prices: the worker's share is capped
    /// at [`Commission::worker_budget`], so the charge never exceeds what the
    /// client signed, whoever let the answer run long.
    pub fn bill(&self, worker_cost: NanoTon, max_charge: NanoTon) -> Bill {
        let budget = self.worker_budget(max_charge);
        let over_budget = worker_cost > budget;
        let worker_cost = worker_cost.min(budget);
        let commission = self.on(worker_cost);
        Bill { worker_cost, commission, charge: worker_cost.saturating_add(commission), over_budget }
    }
}

/// One answer's charge, as the proxy records it and the client runner checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bill {
    /// The worker's share: its prices applied to the receipt, at most the budget.
    pub worker_cost: NanoTon,
    pub commission: NanoTon,
    /// `worker_cost + commission`, never above the client's signed maximum.
    pub charge: NanoTon,
    /// The tokens cost more than the budget: the worker's share was cut to it.
    pub over_budget: bool,
}

/// A proxy's price terms (`GET /v1/terms`): the exact bytes its evidence binds
/// as its config digest, so a client knows whom it pays and what on top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTerms {
    pub version: u32,
    /// Hex Ed25519 public key of the proxy's account.
    pub account_key: String,
    /// Commission on top of the worker's cost, in parts per million.
    pub commission_ppm: u64,
    /// What a client may owe beyond its deposits.
    pub credit_limit: NanoTon,
}

impl ProxyTerms {
    pub fn commission(&self) -> Result<Commission, CommissionError> {
        Commission::from_ppm(self.commission_ppm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(p: u64, c: u64) -> Prices {
        Prices { prompt_per_1k: NanoTon(p), completion_per_1k: NanoTon(c) }
    }

    #[test]
    fn a_price_ceiling_reads_as_prompt_comma_completion_and_bounds_both() {
        assert_eq!("1000, 3000".parse::<Prices>(), Ok(prices(1000, 3000)));
        assert_eq!(prices(1000, 3000).to_string().parse::<Prices>(), Ok(prices(1000, 3000)));
        for bad in ["1000", "1000,", "a,b", "1,2,3", "-1,2", ""] {
            assert!(bad.parse::<Prices>().is_err(), "{bad:?}");
        }
        let ceiling = prices(1000, 3000);
        assert!(prices(1000, 3000).within(&ceiling) && prices(0, 0).within(&ceiling));
        assert!(!prices(1001, 1).within(&ceiling) && !prices(1, 3001).within(&ceiling));
    }

    #[test]
    fn cost_rounds_up_and_saturates() {
        assert_eq!(prices(1000, 2000).cost(3, 4), NanoTon(11));
        assert_eq!(prices(1, 1).cost(1, 0), NanoTon(1), "a fraction of a nanoTON is charged as one");
        assert_eq!(prices(0, 0).cost(100, 100), NanoTon(0));
        assert_eq!(prices(u64::MAX, u64::MAX).cost(u32::MAX, u32::MAX), NanoTon(u64::MAX));
    }

    #[test]
    fn max_completion_tokens_is_the_largest_that_fits() {
        for (p, c, max, prompt) in [(1000u64, 2000u64, 50u64, 7u32), (7, 13, 1, 0), (5, 3, 1000, 100), (0, 9, 10, 5)] {
            let pr = prices(p, c);
            let n = pr.max_completion_tokens(NanoTon(max), prompt).unwrap();
            assert!(pr.cost(prompt, n) <= NanoTon(max), "{p} {c} {max} {prompt}: {n}");
            assert!(pr.cost(prompt, n + 1) > NanoTon(max), "{p} {c} {max} {prompt}: {n} is not the largest");
        }
        assert_eq!(prices(5, 0).max_completion_tokens(NanoTon(1), 1), Ok(u32::MAX));
        assert_eq!(
            prices(2000, 1).max_completion_tokens(NanoTon(3), 2),
            Err(BudgetError::PromptOverBudget { prompt_cost: NanoTon(4), max_cost: NanoTon(3) })
        );
    }

    #[test]
    fn commission_charge_and_budget_agree() {
        assert!(Commission::from_ppm(PPM + 1).is_err());
        let c = Commission::from_ppm(100_000).unwrap();
        assert_eq!(c.on(NanoTon(1234)), NanoTon(123));
        assert_eq!(c.charge(NanoTon(1234)), NanoTon(1357));
        for ppm in [0, 1, 99_999, 100_000, 333_333, PPM] {
            let c = Commission::from_ppm(ppm).unwrap();
            for max in 0..2000u64 {
                let w = c.worker_budget(NanoTon(max));
                assert!(c.charge(w) <= NanoTon(max), "ppm {ppm} max {max}: budget {w:?} overcharges");
                assert!(c.charge(NanoTon(w.0 + 1)) > NanoTon(max), "ppm {ppm} max {max}: budget {w:?} too small");
            }
        }
    }

    #[test]
    fn worker_budget_is_closed_form_near_the_top_of_the_range() {
        // The old search stepped one nanoTON at a time while a saturating charge stayed
        // within the maximum: about 10^18 steps here. Each of these must return at once.
        for ppm in [0, 1, 100_000, 999_999, PPM] {
            let c = Commission::from_ppm(ppm).unwrap();
            for max in [u64::MAX, u64::MAX - 1, u64::MAX / 2, 1 << 63] {
                let w = c.worker_budget(NanoTon(max));
                let exact = |w: u128| w + w * ppm as u128 / PPM as u128;
                assert!(exact(w.0 as u128) <= max as u128, "ppm {ppm} max {max}: {w:?} overcharges");
                assert!(exact(w.0 as u128 + 1) > max as u128, "ppm {ppm} max {max}: {w:?} is not the largest");
            }
        }
    }

    #[test]
    fn a_bill_never_exceeds_the_signed_maximum() {
        let c = Commission::from_ppm(125_000).unwrap();
        let b = c.bill(NanoTon(800), NanoTon(10_000));
        assert_eq!(
            (b.worker_cost, b.commission, b.charge, b.over_budget),
            (NanoTon(800), NanoTon(100), NanoTon(900), false)
        );
        let b = c.bill(NanoTon(1_000_000), NanoTon(9_000));
        assert_eq!(
            (b.worker_cost, b.commission, b.charge, b.over_budget),
            (NanoTon(8_000), NanoTon(1_000), NanoTon(9_000), true)
        );
        assert_eq!(c.bill(NanoTon(5), NanoTon(0)).charge, NanoTon(0));
    }
}
