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
        // Every special token and timestamp after the end one: transcripts are text.
        for s in suppressed.iter_mut().skip(end as usize + 1) {
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
        if samples.len() > WINDOW_SAMPLES {
            return Err(TranscribeError::TooLong { seconds: samples.len() as f64 / SAMPLE_RATE as f64 });
        }
        let mut windows = self.transcribe(samples)?;
        Ok(windows.swap_remove(0))
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
            windows.push(self.decode_window(&mel, seek)?);
            seek += FRAMES;
        }
        Ok(windows)
    }

    /// Decodes the 30 s of `mel` from frame `seek` (zeros past its end, as faster-whisper pads).
    fn decode_window(&self, mel: &LogMel, seek: usize) -> Result<Transcript, TranscribeError> {
        let frames = (mel.frames - seek).min(FRAMES);
        let mut window = vec![0f32; N_MELS * FRAMES];
        for m in 0..N_MELS {
            let row = &mel.values[m * mel.frames + seek..m * mel.frames + seek + frames];
            window[m * FRAMES..m * FRAMES + frames].copy_from_slice(row);
        }
        let input = Tensor::<B, 3>::from_data(TensorData::new(window, [1, N_MELS, FRAMES]), &self.device);
        let audio = self.decoder.audio_context(self.encoder.forward(input));
        let mut tokens = vec![self.start, self.no_timestamps];
        let prompt = tokens.len();
        let mut state = self.decoder.start();
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
