//! Audio as apps send it (WAV, FLAC, MP3, and Ogg Opus as Telegram voice
//! notes are) to what Whisper hears: 16 kHz mono f32 samples.
//!
//! Containers and the WAV/FLAC/MP3 codecs are `symphonia`'s (pure Rust,
//! maintained, the widest coverage without C). Symphonia has no Opus
//! decoder; `opus-decoder` (pure Rust, no unsafe, no FFI, RFC 8251
//! conformant) decodes the Ogg Opus packets symphonia demuxes, at 48 kHz;
//! its output agrees with libopus's `opusdec` to about 60 dB (the tests
//! compare them). Every rate but 16 kHz is then resampled with `rubato`'s
//! FFT resampler.
//!
//! Every input is outside input: its size is bounded before decoding, its
//! decoded duration while decoding (a small file cannot expand into hours),
//! and every failure is an [`AudioError`] saying what was expected.

use std::io::Cursor;

use rubato::{FftFixedInOut, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, CODEC_TYPE_OPUS, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Whisper's sample rate.
pub const RATE: u32 = 16_000;
/// Opus's own rate, in which its pre-skip is counted.
const OPUS_RATE: u32 = 48_000;

/// What one request's audio may be.
#[derive(Debug, Clone, Copy)]
pub struct AudioLimits {
    /// The encoded file's size (OpenAI's limit is 25 MB).
    pub max_bytes: usize,
    /// The decoded duration.
    pub max_seconds: u32,
}

impl Default for AudioLimits {
    fn default() -> Self {
        AudioLimits { max_bytes: 25 * 1024 * 1024, max_seconds: 60 * 60 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error("the audio file is empty")]
    Empty,
    #[error("the audio file has {bytes} bytes; at most {max} are accepted")]
    TooLarge { bytes: usize, max: usize },
    #[error("the audio lasts more than {max_seconds} s, the most accepted")]
    TooLong { max_seconds: u32 },
    #[error("not an audio file this worker reads (WAV, FLAC, MP3 or Ogg Opus): {0}")]
    Format(String),
    #[error("the audio's codec is not one this worker decodes: {0}")]
    Codec(String),
    #[error("the audio could not be decoded: {0}")]
    Decode(String),
    #[error("the audio holds no sound (no samples decoded)")]
    Silent,
}

/// Decoded audio, ready for Whisper.
#[derive(Debug, Clone)]
pub struct Audio {
    /// 16 kHz mono, in [-1, 1].
    pub samples: Vec<f32>,
    /// The rate and channel count the file had (Opus: decoded at 48 kHz).
    pub source_rate: u32,
    pub source_channels: usize,
    /// `wav`, `flac`, `mp3` or `opus`.
    pub codec: &'static str,
}

impl Audio {
    /// Its duration in seconds: what transcription is metered by.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / RATE as f64
    }
}

/// Decodes `bytes` (any of the formats above) to 16 kHz mono within `limits`.
pub fn decode(bytes: &[u8], limits: &AudioLimits) -> Result<Audio, AudioError> {
    let native = decode_native(bytes, limits)?;
    let samples = resample(&native.samples, native.source_rate)?;
    Ok(Audio { samples, ..native })
}

/// [`decode`] without the resampling: mono at the file's own rate (48 kHz
/// for Opus), in `samples`.
pub fn decode_native(bytes: &[u8], limits: &AudioLimits) -> Result<Audio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(AudioError::TooLarge { bytes: bytes.len(), max: limits.max_bytes });
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| AudioError::Format(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Format("it has no audio track".into()))?
        .clone();
    let params = &track.codec_params;
    let (rate, channels, codec, mono) = if params.codec == CODEC_TYPE_OPUS {
        let head = OpusHead::parse(params.extra_data.as_deref().unwrap_or_default())?;
        let mono = decode_opus(&mut *format, track.id, &head, limits)?;
        (OPUS_RATE, head.channels as usize, "opus", mono)
    } else {
        let rate = params.sample_rate.ok_or_else(|| AudioError::Format("the track states no sample rate".into()))?;
        let (channels, codec, mono) = decode_symphonia(&mut *format, &track, rate, limits)?;
        (rate, channels, codec, mono)
    };
    if mono.is_empty() {
        return Err(AudioError::Silent);
    }
    Ok(Audio { samples: mono, source_rate: rate, source_channels: channels, codec })
}

/// The track decoded by symphonia and mixed down to mono, at its own rate.
fn decode_symphonia(
    format: &mut dyn symphonia::core::formats::FormatReader,
    track: &symphonia::core::formats::Track,
    rate: u32,
    limits: &AudioLimits,
) -> Result<(usize, &'static str, Vec<f32>), AudioError> {
    let codec = match symphonia::default::get_codecs().get_codec(track.codec_params.codec) {
        Some(d) if d.short_name.starts_with("pcm") => "wav",
        Some(d) if d.short_name == "flac" => "flac",
        Some(d) if d.short_name == "mp3" => "mp3",
        Some(d) => return Err(AudioError::Codec(d.short_name.to_string())),
        None => return Err(AudioError::Codec(format!("{:?}", track.codec_params.codec))),
    };
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Codec(e.to_string()))?;
    let max_frames = limits.max_seconds as u64 * rate as u64;
    let mut mono = Vec::new();
    let mut channels = track.codec_params.channels.map(|c| c.count()).unwrap_or(1);
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(AudioError::Decode(e.to_string())),
        };
        if packet.track_id() != track.id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet in the middle is skipped, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(AudioError::Decode(e.to_string())),
        };
        let spec = *decoded.spec();
        channels = spec.channels.count().max(1);
        if spec.rate != rate {
            return Err(AudioError::Decode(format!("the rate changed from {rate} to {} Hz mid-stream", spec.rate)));
        }
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buf.copy_interleaved_ref(decoded);
        push_mono(&mut mono, buf.samples(), channels);
        if mono.len() as u64 > max_frames {
            return Err(AudioError::TooLong { max_seconds: limits.max_seconds });
        }
    }
    Ok((channels, codec, mono))
}

/// Ogg Opus's identification header (RFC 7845 section 5.1), the fields used.
struct OpusHead {
    channels: u8,
    /// Samples (at 48 kHz) to drop from the start.
    pre_skip: u16,
}

impl OpusHead {
    fn parse(b: &[u8]) -> Result<OpusHead, AudioError> {
        if b.len() < 19 || &b[..8] != b"OpusHead" {
            return Err(AudioError::Format("the Opus stream has no OpusHead".into()));
        }
        let (channels, family) = (b[9], b[18]);
        if family != 0 || !(1..=2).contains(&channels) {
            return Err(AudioError::Codec(format!(
                "Opus with {channels} channels in mapping family {family}; mono or stereo (family 0) are decoded"
            )));
        }
        Ok(OpusHead { channels, pre_skip: u16::from_le_bytes([b[10], b[11]]) })
    }
}

/// The Opus track decoded at 48 kHz and mixed down to mono, its pre-skip dropped.
fn decode_opus(
    format: &mut dyn symphonia::core::formats::FormatReader,
    track: u32,
    head: &OpusHead,
    limits: &AudioLimits,
) -> Result<Vec<f32>, AudioError> {
    let channels = head.channels as usize;
    let mut decoder =
        opus_decoder::OpusDecoder::new(OPUS_RATE, channels).map_err(|e| AudioError::Decode(e.to_string()))?;
    // 120 ms, the longest Opus packet.
    let mut pcm = vec![0f32; OPUS_RATE as usize * 12 / 100 * channels];
    let max_frames = limits.max_seconds as u64 * OPUS_RATE as u64;
    let mut skip = head.pre_skip as usize;
    let mut mono = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(AudioError::Decode(e.to_string())),
        };
        if packet.track_id() != track {
            continue;
        }
        let n = decoder
            .decode_float(&packet.data, &mut pcm, false)
            .map_err(|e| AudioError::Decode(format!("an Opus packet: {e}")))?;
        let decoded = &pcm[..n * channels];
        let dropped = skip.min(n);
        skip -= dropped;
        push_mono(&mut mono, &decoded[dropped * channels..], channels);
        if mono.len() as u64 > max_frames {
            return Err(AudioError::TooLong { max_seconds: limits.max_seconds });
        }
    }
    Ok(mono)
}

fn push_mono(mono: &mut Vec<f32>, interleaved: &[f32], channels: usize) {
    if channels == 1 {
        mono.extend_from_slice(interleaved);
    } else {
        mono.extend(interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32));
    }
}

/// `samples` at `rate` to [`RATE`], as long as the input lasts.
pub fn resample(samples: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    if rate == RATE || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let bad = |e: String| AudioError::Decode(format!("resampling from {rate} Hz: {e}"));
    let mut r = FftFixedInOut::<f32>::new(rate as usize, RATE as usize, 1024, 1).map_err(|e| bad(e.to_string()))?;
    let expected = (samples.len() as u64 * RATE as u64).div_ceil(rate as u64) as usize;
    let delay = r.output_delay();
    let mut out = Vec::with_capacity(expected + delay + 2048);
    let mut at = 0;
    while samples.len() - at >= r.input_frames_next() {
        let n = r.input_frames_next();
        let chunk = r.process(&[&samples[at..at + n]], None).map_err(|e| bad(e.to_string()))?;
        out.extend_from_slice(&chunk[0]);
        at += n;
    }
    let tail = r.process_partial(Some(&[&samples[at..]]), None).map_err(|e| bad(e.to_string()))?;
    out.extend_from_slice(&tail[0]);
    while out.len() < expected + delay {
        let flushed = r.process_partial::<&[f32]>(None, None).map_err(|e| bad(e.to_string()))?;
        out.extend_from_slice(&flushed[0]);
    }
    Ok(out[delay..delay + expected].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded_before_decoding_and_garbage_is_refused() {
        let limits = AudioLimits { max_bytes: 100, max_seconds: 10 };
        assert_eq!(decode(&[], &limits).unwrap_err(), AudioError::Empty);
        assert_eq!(decode(&[0; 101], &limits).unwrap_err(), AudioError::TooLarge { bytes: 101, max: 100 });
        assert!(matches!(decode(b"this is not audio at all", &limits), Err(AudioError::Format(_))));
    }

    #[test]
    fn resampling_keeps_a_tone_its_pitch_and_the_duration() {
        let rate = 44_100;
        let tone: Vec<f32> =
            (0..rate).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / rate as f32).sin() * 0.5).collect();
        let out = resample(&tone, rate as u32).unwrap();
        assert_eq!(out.len(), 16_000);
        // Away from the edges: a 1 kHz sine at 16 kHz (the best-fitting one:
        // the filter may shift it by a fraction of a sample), amplitude kept.
        let w = 2.0 * std::f64::consts::PI * 1000.0 / 16_000.0;
        let span = &out[1000..15_000];
        let (mut s, mut c) = (0f64, 0f64);
        for (i, v) in span.iter().enumerate() {
            s += *v as f64 * (w * i as f64).sin();
            c += *v as f64 * (w * i as f64).cos();
        }
        let (a, b) = (2.0 * s / span.len() as f64, 2.0 * c / span.len() as f64);
        assert!(((a * a + b * b).sqrt() - 0.5).abs() < 0.005, "amplitude {}", (a * a + b * b).sqrt());
        let (mut err, mut sig) = (0f64, 0f64);
        for (i, v) in span.iter().enumerate() {
            let fit = a * (w * i as f64).sin() + b * (w * i as f64).cos();
            err += (*v as f64 - fit).powi(2);
            sig += fit * fit;
        }
        let snr = 10.0 * (sig / err).log10();
        assert!(snr > 60.0, "SNR {snr:.1} dB");
        assert_eq!(resample(&tone[..100], RATE).unwrap().len(), 100, "16 kHz passes through");
    }
}
