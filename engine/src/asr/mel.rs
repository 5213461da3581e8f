//! Whisper's front end: 16 kHz mono samples to an 80-bin log-mel spectrogram,
//! as Whisper defines it and faster-whisper computes it (its
//! `FeatureExtractor`, the reference the tests compare against within 1e-4):
//! 160 samples of silence appended, reflect padding of n_fft / 2 on each
//! side, a periodic Hann window of 400 samples every 160 (10 ms), the power
//! of each frame's 201 frequency bins (the last frame dropped), Slaney-style
//! mel filters, log10 clamped below at 1e-10 and at 8 below the loudest
//! value, then scaled to (x + 4) / 4.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const N_MELS: usize = 80;
/// Frequency bins of a frame (n_fft / 2 + 1).
const BINS: usize = N_FFT / 2 + 1;

/// A log-mel spectrogram: `N_MELS` rows of `frames` values, one frame per
/// 10 ms of audio.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    pub frames: usize,
    /// Row-major, `[mel][frame]`.
    pub values: Vec<f32>,
}

/// The window, filters and FFT plan, made once.
pub struct FrontEnd {
    window: Vec<f32>,
    /// `[mel][bin]`.
    filters: Vec<f32>,
    fft: Arc<dyn Fft<f64>>,
}

impl Default for FrontEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontEnd {
    pub fn new() -> FrontEnd {
        // np.hanning(401)[:-1]: the periodic Hann window, made in f64 and kept as f32.
        let window = (0..N_FFT)
            .map(|n| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32)
            .collect();
        FrontEnd { window, filters: mel_filters(), fft: FftPlanner::new().plan_fft_forward(N_FFT) }
    }

    /// The log-mel spectrogram of `samples` (16 kHz mono, any length above
    /// zero): `samples.len() / 160 + 1` frames.
    pub fn log_mel(&self, samples: &[f32]) -> LogMel {
        let mut padded = samples.to_vec();
        padded.resize(samples.len() + HOP, 0.0);
        let n = padded.len();
        let half = N_FFT / 2;
        // One frame per hop over the reflect-padded signal, the last one dropped.
        let frames = (n + 2 * half - N_FFT) / HOP;
        let mut power = vec![0f32; BINS * frames];
        let mut buf = vec![Complex::new(0f64, 0f64); N_FFT];
        for f in 0..frames {
            for (k, slot) in buf.iter_mut().enumerate() {
                let x = padded[reflect(f * HOP + k, half, n)];
                *slot = Complex::new((x * self.window[k]) as f64, 0.0);
            }
            self.fft.process(&mut buf);
            for (b, c) in buf[..BINS].iter().enumerate() {
                let m = c.norm() as f32;
                power[b * frames + f] = m * m;
            }
        }
        let mut values = vec![0f32; N_MELS * frames];
        for m in 0..N_MELS {
            let row = &self.filters[m * BINS..(m + 1) * BINS];
            for f in 0..frames {
                let mut acc = 0f32;
                for (b, w) in row.iter().enumerate() {
                    acc += w * power[b * frames + f];
                }
                values[m * frames + f] = acc.max(1e-10).log10();
            }
        }
        let top = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut values {
            *v = (v.max(top - 8.0) + 4.0) / 4.0;
        }
        LogMel { frames, values }
    }
}

/// The sample at `i` of the signal padded by `half` on each side, mirrored at
/// the ends without repeating the edge sample (numpy's `reflect`).
fn reflect(i: usize, half: usize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1) as isize;
    let mut j = (i as isize - half as isize).rem_euclid(period);
    if j >= n as isize {
        j = period - j;
    }
    j as usize
}

/// Slaney-style mel filters (librosa's default, as Whisper uses), `[mel][bin]`.
fn mel_filters() -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..BINS).map(|b| b as f64 * sr / N_FFT as f64).collect();
    // Mel points equally spaced from 0 to the mel of 8 kHz, as Hz.
    let max_mel = 45.245640471924965;
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    let hz: Vec<f64> = (0..N_MELS + 2)
        .map(|i| {
            let mel = max_mel * i as f64 / (N_MELS + 1) as f64;
            if mel >= min_log_mel { min_log_hz * (log_step * (mel - min_log_mel)).exp() } else { f_sp * mel }
        })
        .collect();
    let mut filters = vec![0f32; N_MELS * BINS];
    for m in 0..N_MELS {
        let (lo, mid, hi) = (hz[m], hz[m + 1], hz[m + 2]);
        let norm = 2.0 / (hi - lo);
        for (b, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - lo) / (mid - lo);
            let falling = (hi - f) / (hi - mid);
            filters[m * BINS + b] = (rising.min(falling).max(0.0) * norm) as f32;
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        // np.pad([0, 1, 2, 3], 3, mode="reflect") == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
        let got: Vec<usize> = (0..10).map(|i| reflect(i, 3, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect(5, 2, 1), 0);
    }

    #[test]
    fn frames_are_one_per_hop_and_silence_is_flat() {
        let fe = FrontEnd::new();
        for len in [1, 159, 160, 161, 16_000] {
            assert_eq!(fe.log_mel(&vec![0.0; len]).frames, len / HOP + 1, "{len}");
        }
        let silent = fe.log_mel(&vec![0.0; 1600]);
        assert!(silent.values.iter().all(|&v| v == (-10.0 + 4.0) / 4.0));
    }
}
