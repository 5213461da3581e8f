//! A worker's reputation from the outcomes the proxy observes, and the
//! routing cost that combines it with price and load.
//!
//! The proxy sends a request to the eligible worker (serving the model, up,
//! not quarantined, with room, within the client's price ceiling) of least
//!
//! ```text
//! cost = price_term × load_term × latency_term / (0.05 + score)
//! price_term   = (expected cost / cheapest eligible expected cost) ^ price_weight
//! load_term    = 1 / (1 − in_flight / capacity)
//! latency_term = 1 + ttfb_ms / 100
//! ```
//!
//! where the expected cost is the request's prompt and `max_tokens` (or a
//! typical request's) at the worker's attested prices. Why this shape: the
//! load term is about 1 while a worker has room and grows without bound as
//! it fills (the queueing delay of a server near saturation), so the
//! cheapest worker takes the traffic while it has capacity, and the next
//! cheapest the overflow once the cheapest's load term passes their price
//! ratio (at weight 2, a worker 1.5 times dearer takes over when the
//! cheapest is 5/9 full; twice as dear, when it is 3/4 full). Reputation and
//! latency still divide and multiply: a cheap worker with a poor score or a
//! slow first byte loses to a slightly dearer good one, and a quarantined
//! one gets nothing. `price_weight = 0` routes by load and reputation alone.
//!
//! Pure: every function takes the time in, so the decay and the ranking are
//! tested without clocks.

use serde::{Deserialize, Serialize};

use cocoon_protocol::NanoTon;

/// Where scores start and where they decay back to.
pub const NEUTRAL: f64 = 0.5;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// Time for a score's distance from neutral (and a latency estimate) to halve.
    pub half_life_s: f64,
    /// How long a worker that sent a missing or invalid receipt gets no traffic.
    pub quarantine_s: f64,
    /// Weight of the newest outcome in the moving averages.
    pub alpha: f64,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig { half_life_s: 300.0, quarantine_s: 600.0, alpha: 0.2 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Answered with a valid receipt.
    Completed {
        ttfb_ms: f64,
        tokens: u32,
        seconds: f64,
    },
    /// Refused or broke before or during the answer.
    Failed,
    TimedOut,
    /// Answered without a receipt, or with one that does not verify: severe.
    BadReceipt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reputation {
    pub score: f64,
    pub completed: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub bad_receipts: u64,
    /// Moving average of the time to the first response byte.
    pub ttfb_ms: f64,
    /// Moving average of completion tokens per second.
    pub tokens_per_s: f64,
    /// Unix time (ms) until which the worker is quarantined.
    pub quarantined_until_ms: u64,
    pub updated_at_ms: u64,
    /// Outcomes since the worker was new or last quarantined: below
    /// `EXPLORE_SAMPLES` it is on trial and is probed whenever it is idle.
    pub trial_outcomes: u64,
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation {
            score: NEUTRAL,
            completed: 0,
            failed: 0,
            timed_out: 0,
            bad_receipts: 0,
            ttfb_ms: 0.0,
            tokens_per_s: 0.0,
            quarantined_until_ms: 0,
            updated_at_ms: 0,
            trial_outcomes: 0,
        }
    }
}

impl Reputation {
    pub fn new(now_ms: u64) -> Self {
        Reputation { updated_at_ms: now_ms, ..Default::default() }
    }

    /// Moves the score toward neutral and the latency estimate toward zero, so
    /// that a worker that recovered is tried again and wins traffic back.
    pub fn decay(&mut self, now_ms: u64, cfg: &ReputationConfig) {
        let dt = now_ms.saturating_sub(self.updated_at_ms) as f64 / 1000.0;
        if dt <= 0.0 || cfg.half_life_s <= 0.0 {
            return;
        }
        let keep = 0.5f64.powf(dt / cfg.half_life_s);
        self.score = NEUTRAL + (self.score - NEUTRAL) * keep;
        self.ttfb_ms *= keep;
        self.updated_at_ms = now_ms;
    }

    pub fn record(&mut self, outcome: Outcome, now_ms: u64, cfg: &ReputationConfig) {
        self.decay(now_ms, cfg);
        self.updated_at_ms = now_ms;
        self.trial_outcomes = self.trial_outcomes.saturating_add(1);
        let a = cfg.alpha;
        match outcome {
            Outcome::Completed { ttfb_ms, tokens, seconds } => {
                self.completed += 1;
                self.score += a * (1.0 - self.score);
                self.ttfb_ms = if self.completed == 1 { ttfb_ms } else { self.ttfb_ms + a * (ttfb_ms - self.ttfb_ms) };
                if seconds > 0.0 && tokens > 0 {
                    let rate = tokens as f64 / seconds;
                    self.tokens_per_s = if self.tokens_per_s == 0.0 {
                        rate
                    } else {
                        self.tokens_per_s + a * (rate - self.tokens_per_s)
                    };
                }
            }
            Outcome::Failed => {
                self.failed += 1;
                self.score -= a * self.score;
            }
            Outcome::TimedOut => {
                self.timed_out += 1;
                self.score -= a * self.score;
            }
            Outcome::BadReceipt => {
                self.bad_receipts += 1;
                self.score = 0.0;
                // Once the quarantine is over the worker must earn its score
                // back, which it can only do if it is tried.
                self.trial_outcomes = 0;
                self.quarantined_until_ms = now_ms + (cfg.quarantine_s * 1000.0) as u64;
            }
        }
    }

    pub fn quarantined(&self, now_ms: u64) -> bool {
        now_ms < self.quarantined_until_ms
    }
}

/// Latency that doubles a worker's routing cost.
const REFERENCE_TTFB_MS: f64 = 100.0;

/// Outcomes below which a worker is still being explored.
const EXPLORE_SAMPLES: u64 = 3;

/// How much dearer a worker's expected cost is than the cheapest eligible
/// worker's, raised to `weight`: 1 for the cheapest (and for every worker at
/// weight 0), 4 for a worker twice as dear at weight 2. A nanoTON is added to
/// both so that free workers compare too.
pub fn price_term(expected: NanoTon, cheapest: NanoTon, weight: f64) -> f64 {
    let ratio = (expected.0 as f64 + 1.0) / (cheapest.0 as f64 + 1.0);
    ratio.max(1.0).powf(weight)
}

/// Lower is better (see the module's formula). A worker on trial (new, or
/// back from quarantine) with too few outcomes to judge goes first while
/// idle and at half cost while busy, like a half-open circuit breaker: one
/// probe at a time, whatever the others' scores, so that a score at zero can
/// recover and low traffic cannot starve it; among idle workers on trial,
/// the cheaper is probed first. A worker without room costs infinity.
pub fn routing_cost(in_flight: u32, capacity: u32, rep: &Reputation, price_term: f64) -> f64 {
    let capacity = capacity.max(1);
    if in_flight >= capacity {
        return f64::INFINITY;
    }
    let load = 1.0 / (1.0 - in_flight as f64 / capacity as f64);
    let cost = price_term * load * (1.0 + rep.ttfb_ms / REFERENCE_TTFB_MS) / (0.05 + rep.score);
    match (rep.trial_outcomes < EXPLORE_SAMPLES, in_flight) {
        (true, 0) => (price_term - 1.0) * 1e-6,
        (true, _) => cost / 2.0,
        (false, _) => cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: ReputationConfig = ReputationConfig { half_life_s: 10.0, quarantine_s: 5.0, alpha: 0.2 };

    fn done(ttfb_ms: f64) -> Outcome {
        Outcome::Completed { ttfb_ms, tokens: 10, seconds: 1.0 }
    }

    #[test]
    fn successes_raise_failures_lower_and_time_heals() {
        let mut r = Reputation::new(0);
        r.record(done(10.0), 0, &CFG);
        assert!(r.score > NEUTRAL);
        let mut bad = Reputation::new(0);
        for _ in 0..5 {
            bad.record(Outcome::Failed, 0, &CFG);
        }
        assert!(bad.score < 0.2, "{}", bad.score);
        let before = NEUTRAL - bad.score;
        bad.decay(10_000, &CFG);
        assert!(((NEUTRAL - bad.score) - before / 2.0).abs() < 1e-9, "one half-life halves the distance");
        bad.decay(200_000, &CFG);
        assert!((bad.score - NEUTRAL).abs() < 1e-3);
    }

    #[test]
    fn bad_receipt_quarantines_until_its_time_is_up() {
        let mut r = Reputation::new(0);
        r.record(Outcome::BadReceipt, 1_000, &CFG);
        assert!(r.quarantined(1_000) && r.quarantined(5_999));
        assert!(!r.quarantined(6_000));
        assert_eq!(r.score, 0.0);
    }

    #[test]
    fn load_spreads_and_slow_workers_cost_more() {
        let judged = |ttfb_ms: f64| {
            let mut r = Reputation::new(0);
            for _ in 0..EXPLORE_SAMPLES {
                r.record(done(ttfb_ms), 0, &CFG);
            }
            r
        };
        let (fast, slow) = (judged(5.0), judged(500.0));
        assert!(routing_cost(0, 8, &fast, 1.0) < routing_cost(0, 8, &slow, 1.0));
        // A busy fast worker loses to an idle slow one eventually.
        assert!(routing_cost(7, 8, &fast, 1.0) > routing_cost(0, 8, &slow, 1.0));
        // Equal workers: the less loaded wins.
        assert!(routing_cost(1, 8, &fast, 1.0) < routing_cost(2, 8, &fast, 1.0));
        // A new worker is tried before a proven idle one.
        let mut proven = fast.clone();
        for _ in 0..5 {
            proven.record(done(5.0), 0, &CFG);
        }
        assert!(routing_cost(0, 8, &Reputation::new(0), 1.0) < routing_cost(0, 8, &proven, 1.0));
    }

    #[test]
    fn a_worker_back_from_quarantine_is_probed_first_until_judged_again() {
        let mut proven = Reputation::new(0);
        let mut back = Reputation::new(0);
        for _ in 0..10 {
            proven.record(done(1.0), 0, &CFG);
            back.record(done(1.0), 0, &CFG);
        }
        back.record(Outcome::BadReceipt, 0, &CFG);
        assert!(back.quarantined(4_999));
        back.decay(5_000, &CFG);
        assert!(back.score < 0.3, "its score is still low: {}", back.score);
        // Idle, it is probed before an idle proven worker; busy, it is not
        // preferred to an idle one.
        assert_eq!(routing_cost(0, 8, &back, 1.0), 0.0);
        assert!(routing_cost(1, 8, &back, 1.0) > routing_cost(0, 8, &proven, 1.0));
        for _ in 0..EXPLORE_SAMPLES {
            back.record(done(1.0), 5_000, &CFG);
        }
        assert!(routing_cost(0, 8, &back, 1.0) > 0.0, "after its trial it is ranked by cost again");
    }

    fn judged(score_from: &[Outcome], ttfb_ms: f64) -> Reputation {
        let mut r = Reputation::new(0);
        for _ in 0..EXPLORE_SAMPLES {
            r.record(done(ttfb_ms), 0, &CFG);
        }
        for o in score_from {
            r.record(*o, 0, &CFG);
        }
        r
    }

    #[test]
    fn the_cheapest_takes_the_traffic_until_it_fills_then_the_next_takes_the_overflow() {
        let good = judged(&[], 5.0);
        let (cheap, dear) = (NanoTon(1_000), NanoTon(2_000));
        let (p_cheap, p_dear) = (price_term(cheap, cheap, 2.0), price_term(dear, cheap, 2.0));
        // (Each cost plus a nanoTON: 2001/1001 squared.)
        assert!(p_cheap == 1.0 && (p_dear - 4.0).abs() < 0.01, "{p_cheap} {p_dear}");
        // Twice as dear at weight 2: the dear worker takes over once the cheap one is 3/4 full.
        for in_flight in 0..6 {
            assert!(routing_cost(in_flight, 8, &good, p_cheap) < routing_cost(0, 8, &good, p_dear), "{in_flight}");
        }
        assert!(routing_cost(7, 8, &good, p_cheap) > routing_cost(0, 8, &good, p_dear));
        assert_eq!(routing_cost(8, 8, &good, p_cheap), f64::INFINITY);
        // Weight 0: price does not count.
        assert_eq!(price_term(dear, cheap, 0.0), 1.0);
        // Free workers compare too.
        assert!(price_term(NanoTon(10), NanoTon(0), 1.0) > 1.0);
    }

    #[test]
    fn a_cheap_worker_with_a_poor_score_loses_to_a_slightly_dearer_good_one() {
        let good = judged(&[], 5.0);
        let poor = judged(&[Outcome::Failed, Outcome::Failed, Outcome::TimedOut, Outcome::Failed], 5.0);
        let slow = judged(&[], 400.0);
        let slightly_dearer = price_term(NanoTon(1_100), NanoTon(1_000), 2.0);
        assert!(routing_cost(0, 8, &poor, 1.0) > routing_cost(0, 8, &good, slightly_dearer));
        assert!(routing_cost(0, 8, &slow, 1.0) > routing_cost(0, 8, &good, slightly_dearer));
        // Among idle workers on trial, the cheaper is probed first.
        let new = Reputation::new(0);
        assert!(routing_cost(0, 8, &new, 1.0) < routing_cost(0, 8, &new, slightly_dearer));
        assert!(routing_cost(0, 8, &new, slightly_dearer) < routing_cost(0, 8, &good, 1.0));
    }
}
