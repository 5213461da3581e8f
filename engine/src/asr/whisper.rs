//! Transcription with a Whisper model in CTranslate2's layout (a directory
//! with `model.bin`, `config.json` and `tokenizer.json`, as faster-whisper's
//! models are): 16 kHz samples to log-mel, the encoder, then greedy decoding
//! from `<|startoftranscript|><|notimestamps|>` with the config's tokens
//! suppressed (and a blank or the end as the first token), as
//! CTranslate2's `generate` does with one beam.
//!
//! Longer audio is cut into consecutive 30 s windows of one log-mel
//! spectrogram of the whole (as faster-whisper does without timestamps), each
//! decoded on its own (not conditioned on the previous window's text).
//! Timestamps and multilingual prompts (language, task) come with the API.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use super::ct2::Ct2Model;
use super::decoder::WhisperDecoder;
use super::encoder::{FRAMES, WhisperEncoder};
use super::mel::{FrontEnd, HOP, LogMel, N_MELS, SAMPLE_RATE};
use crate::LoadError;

/// The longest audio one window holds.
pub const WINDOW_SAMPLES: usize = FRAMES * HOP;

#[derive(Deserialize)]
struct Config {
    suppress_ids: Vec<u32>,
    suppress_ids_begin: Vec<u32>,
}

pub struct WhisperModel<B: Backend> {
    encoder: WhisperEncoder<B>,
    decoder: WhisperDecoder<B>,
    front: FrontEnd,
    tokenizer: tokenizers::Tokenizer,
    /// Per token id: never generated.
    suppressed: Vec<bool>,
    suppressed_first: Vec<u32>,
    start: u32,
    no_timestamps: u32,
    end: u32,
    device: B::Device,
}

/// A stretch of speech and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// One window's transcription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The generated tokens, without the prompt and the end.
    pub tokens: Vec<u32>,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("the audio lasts {seconds:.1} s; one window holds at most 30 s (longer audio is not decoded yet)")]
    TooLong { seconds: f64 },
    #[error("the audio is empty")]
    Empty,
    #[error("decoding the tokens to text: {0}")]
    Text(String),
}

impl<B: Backend> WhisperModel<B> {
    /// Loads the model directory `dir` onto `device`.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, LoadError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| LoadError::Io(format!("{}: {e}", dir.join(name).display())))
        };
        let model = Ct2Model::parse(read("model.bin")?)?;
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| LoadError::Config(format!("{}: {e}", dir.join("config.json").display())))?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        let special =
            |name: &str| tokenizer.token_to_id(name).ok_or_else(|| LoadError::Tokenizer(format!("no {name} token")));
        let (start, no_timestamps, end) =
            (special("<|startoftranscript|>")?, special("<|notimestamps|>")?, special("<|endoftext|>")?);
        let encoder = WhisperEncoder::load(&model, device)?;
        let decoder = WhisperDecoder::load(&model, device)?;
        let vocab = decoder.vocab();
        let mut suppressed = vec![false; vocab];
        for id in config.suppress_ids.iter().chain(&[start, no_timestamps]) {
            if let Some(s) = suppressed.get_mut(*id as usize) {
                *s = true;
            }
        }
        // Every special token after the end one (the timestamps, from
        // <|notimestamps|> + 1 on, are allowed only when asked for).
        for s in suppressed.iter_mut().take(no_timestamps as usize + 1).skip(end as usize + 1) {
            *s = true;
        }
        Ok(WhisperModel {
            encoder,
            decoder,
            front: FrontEnd::new(),
            tokenizer,
            suppressed,
            suppressed_first: config.suppress_ids_begin,
            start,
            no_timestamps,
            end,
            device: device.clone(),
        })
    }

    /// Transcribes up to 30 s of 16 kHz mono samples.
    pub fn transcribe_window(&self, samples: &[f32]) -> Result<Transcript, TranscribeError> {
        self.one_window(samples, false)
    }

    /// Transcribes 16 kHz mono samples of any length, 30 s at a time: one
    /// transcript per window, in order.
    pub fn transcribe(&self, samples: &[f32]) -> Result<Vec<Transcript>, TranscribeError> {
        if samples.is_empty() {
            return Err(TranscribeError::Empty);
        }
        let mel = self.front.log_mel(samples);
        // The last frame is the padding's (faster-whisper's content_frames).
        let content = mel.frames - 1;
        let mut windows = Vec::new();
        let mut seek = 0;
        while seek < content.max(1) {
            windows.push(self.decode_window(&mel, seek, false)?);
            seek += FRAMES;
        }
        Ok(windows)
    }

    /// Transcribes up to 30 s with timestamps: the tokens hold them
    /// (`<|0.00|>` and on, every 20 ms), pairs around each segment's text;
    /// [`WhisperModel::segments`] reads them.
    pub fn transcribe_window_timed(&self, samples: &[f32]) -> Result<Transcript, TranscribeError> {
        self.one_window(samples, true)
    }

    /// Up to 30 s of samples, decoded as the first (and only) window.
    fn one_window(&self, samples: &[f32], timestamps: bool) -> Result<Transcript, TranscribeError> {
        if samples.is_empty() {
            return Err(TranscribeError::Empty);
        }
        if samples.len() > WINDOW_SAMPLES {
            return Err(TranscribeError::TooLong { seconds: samples.len() as f64 / SAMPLE_RATE as f64 });
        }
        self.decode_window(&self.front.log_mel(samples), 0, timestamps)
    }

    /// The segments of a timed transcript: (start s, end s, text) for each
    /// pair of timestamps around text.
    pub fn segments(&self, timed: &Transcript) -> Result<Vec<Segment>, TranscribeError> {
        let first = self.no_timestamps + 1;
        let at = |t: u32| (t - first) as f64 * 0.02;
        let mut out = Vec::new();
        let mut open: Option<(f64, Vec<u32>)> = None;
        for &t in &timed.tokens {
            match (t >= first, open.take()) {
                (true, None) => open = Some((at(t), Vec::new())),
                (true, Some((start, text))) if text.is_empty() => open = Some((start.max(at(t)), text)),
                (true, Some((start, text))) => {
                    let text = self.tokenizer.decode(&text, true).map_err(|e| TranscribeError::Text(e.to_string()))?;
                    out.push(Segment { start, end: at(t), text });
                }
                (false, Some((start, mut text))) => {
                    text.push(t);
                    open = Some((start, text));
                }
                (false, None) => open = Some((0.0, vec![t])),
            }
        }
        Ok(out)
    }

    /// Decodes the 30 s of `mel` from frame `seek` (zeros past its end, as faster-whisper pads).
    fn decode_window(&self, mel: &LogMel, seek: usize, timestamps: bool) -> Result<Transcript, TranscribeError> {
        let frames = (mel.frames - seek).min(FRAMES);
        let mut window = vec![0f32; N_MELS * FRAMES];
        for m in 0..N_MELS {
            let row = &mel.values[m * mel.frames + seek..m * mel.frames + seek + frames];
            window[m * FRAMES..m * FRAMES + frames].copy_from_slice(row);
        }
        let input = Tensor::<B, 3>::from_data(TensorData::new(window, [1, N_MELS, FRAMES]), &self.device);
        let audio = self.decoder.audio_context(self.encoder.forward(input));
        let mut tokens = if timestamps { vec![self.start] } else { vec![self.start, self.no_timestamps] };
        let prompt = tokens.len();
        let mut state = self.decoder.start();
        let first_timestamp = (self.no_timestamps + 1) as usize;
        while tokens.len() < self.decoder.max_positions() {
            let mut logits = self.decoder.step(&tokens[state.len()..], &mut state, &audio);
            for (l, &s) in logits.iter_mut().zip(&self.suppressed) {
                if s {
                    *l = f32::NEG_INFINITY;
                }
            }
            if tokens.len() == prompt {
                for &id in &self.suppressed_first {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            if timestamps {
                timestamp_rules(&mut logits, &tokens[prompt..], first_timestamp, self.end as usize);
            } else if let Some(ts) = logits.get_mut(first_timestamp..) {
                ts.fill(f32::NEG_INFINITY);
            }
            let next =
                logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(self.end);
            if next == self.end {
                break;
            }
            tokens.push(next);
        }
        let tokens = tokens.split_off(prompt);
        let text = self.tokenizer.decode(&tokens, true).map_err(|e| TranscribeError::Text(e.to_string()))?;
        Ok(Transcript { tokens, text })
    }
}

/// Whisper's timestamp rules (as openai-whisper's `ApplyTimestampRules` and
/// CTranslate2 apply them) on the logits after `generated`: the first token is
/// a timestamp within the first second; timestamps come in pairs around text
/// (after a lone one, another or the end; after a pair, text); they never go
/// back; and when the timestamps together are likelier than any text token, a
/// timestamp comes next.
fn timestamp_rules(logits: &mut [f32], generated: &[u32], first_timestamp: usize, end: usize) {
    const MAX_INITIAL: usize = 50; // 1.0 s in 20 ms steps.
    let is_timestamp = |t: u32| t as usize >= first_timestamp;
    let last = generated.last().is_some_and(|&t| is_timestamp(t));
    let penultimate = generated.len() < 2 || is_timestamp(generated[generated.len() - 2]);
    let blank = |range: std::ops::Range<usize>, logits: &mut [f32]| {
        let n = logits.len();
        for l in &mut logits[range.start.min(n)..range.end.min(n)] {
            *l = f32::NEG_INFINITY;
        }
    };
    if last {
        if penultimate {
            blank(first_timestamp..logits.len(), logits);
        } else {
            blank(0..end, logits);
        }
    }
    if let Some(&latest) = generated.iter().rev().find(|&&t| is_timestamp(t)) {
        let floor = if last && !penultimate { latest as usize } else { latest as usize + 1 };
        blank(first_timestamp..floor, logits);
    }
    if generated.is_empty() {
        blank(0..first_timestamp, logits);
        blank(first_timestamp + MAX_INITIAL + 1..logits.len(), logits);
    }
    // Probability mass: all timestamps against the likeliest text token.
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if top == f32::NEG_INFINITY {
        return;
    }
    let norm = top + logits.iter().map(|l| (l - top).exp()).sum::<f32>().ln();
    let timestamps = &logits[first_timestamp.min(logits.len())..];
    let ts_top = timestamps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if ts_top == f32::NEG_INFINITY {
        return;
    }
    let ts_mass = ts_top + timestamps.iter().map(|l| (l - ts_top).exp()).sum::<f32>().ln() - norm;
    let text_best =
        logits[..first_timestamp.min(logits.len())].iter().copied().fold(f32::NEG_INFINITY, f32::max) - norm;
    if ts_mass > text_best {
        blank(0..first_timestamp, logits);
    }
}
