//! Choosing the next token from logits, and finding stop strings in the text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Sampling;

pub struct Sampler {
    params: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: Sampling) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler { params, rng }
    }

    /// The next token. Temperature 0 is greedy (ties go to the lowest id, as in
    /// `argmax` of PyTorch and llama.cpp).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 || self.params.top_k == Some(1) {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut cands: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
        cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            cands.truncate(k as usize);
        }
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p (at least one token).
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= self.params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return cands[i].0;
            }
        }
        cands[probs.len() - 1].0
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Holds back text that could be the start of a stop string, so a stop string
/// split across tokens is never sent.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

pub enum StopScan {
    /// Text safe to send; no stop string yet.
    Continue(String),
    /// A stop string was found: the text before it, then generation ends.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    pub fn push(&mut self, text: &str) -> StopScan {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopScan::Stopped(before);
        }
        // The longest suffix of pending that is a proper prefix of some stop string stays.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopScan::Continue(out)
    }

    /// Text still held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut greedy = Sampler::new(Sampling { temperature: 0.0, ..Sampling::default() });
        assert_eq!(greedy.sample(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed: Some(seed) });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(draw(7).contains(&2), "temperature 1 must sometimes pick the runner-up");
        let mut top1 = Sampler::new(Sampling { temperature: 1.0, top_p: 1.0, top_k: Some(1), seed: Some(1) });
        assert!((0..50).all(|_| top1.sample(&logits) == 1));
        let mut nucleus = Sampler::new(Sampling { temperature: 1.0, top_p: 0.3, top_k: None, seed: Some(1) });
        assert!((0..50).all(|_| nucleus.sample(&logits) == 1));
    }

    #[test]
    fn stop_strings_split_across_pieces_are_never_sent() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        let mut sent = String::new();
        let mut stopped = false;
        for piece in ["Paris", ".", "\n", "\nUs", "er:", " more"] {
            match m.push(piece) {
                StopScan::Continue(t) => sent.push_str(&t),
                StopScan::Stopped(t) => {
                    sent.push_str(&t);
                    stopped = true;
                    break;
                }
            }
        }
        assert!(stopped);
        assert_eq!(sent, "Paris.");
        let mut m = StopMatcher::new(vec!["END".into()]);
        let StopScan::Continue(t) = m.push("the E") else { panic!("no stop yet") };
        assert_eq!(t, "the ");
        assert_eq!(m.flush(), "E");
    }
}
