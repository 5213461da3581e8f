//! Audio in, against the reference decoders (Debian's `opusdec`, `lame`,
//! `flac`, run here): a spoken clip (tests/data/audio) as Ogg Opus, MP3,
//! FLAC and WAV decoded to 16 kHz mono, and files that are not audio, are
//! cut short, last too long or are too large refused with their error.

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_engine::asr::audio::{AudioError, AudioLimits, decode, decode_native, resample};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audio").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

/// A reference decoder's output: the samples of the 16-bit WAV it wrote, and its rate.
fn reference(tool: &str, args: &[&str], input: &str) -> (Vec<f32>, u32) {
    let out = std::env::temp_dir().join(format!("cocoon-audio-{}-{tool}.wav", std::process::id()));
    let mut cmd = Command::new(tool);
    cmd.args(args);
    // flac names its output with -o, before the input; the others take input then output.
    if tool == "flac" {
        cmd.arg("-o").arg(&out).arg(data(input));
    } else {
        cmd.arg(data(input)).arg(&out);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{tool} runs (apt-get install opus-tools lame flac; make test does): {e}"));
    assert!(status.success(), "{tool} failed");
    let wav = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    parse_wav16(&wav)
}

/// A mono 16-bit PCM WAV, read by hand (the reference side must not use the code under test).
fn parse_wav16(b: &[u8]) -> (Vec<f32>, u32) {
    assert_eq!(&b[..4], b"RIFF");
    let mut at = 12;
    let (mut rate, mut samples) = (0, Vec::new());
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &b[at + 8..(at + 8 + len).min(b.len())];
        if id == b"fmt " {
            assert_eq!(u16::from_le_bytes([body[2], body[3]]), 1, "mono");
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            assert_eq!(u16::from_le_bytes([body[14], body[15]]), 16);
        } else if id == b"data" {
            samples = body.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0).collect();
        }
        at += 8 + len + (len & 1);
    }
    (samples, rate)
}

/// SNR (dB) of `ours` against `reference` at the best offset within `search` samples.
fn snr(ours: &[f32], reference: &[f32], search: usize) -> (f64, isize) {
    let mut best = (f64::NEG_INFINITY, 0);
    for shift in -(search as isize)..=search as isize {
        let (mut sig, mut err) = (0f64, 0f64);
        for (i, r) in reference.iter().enumerate() {
            let j = i as isize + shift;
            let o = if j >= 0 && (j as usize) < ours.len() { ours[j as usize] } else { 0.0 };
            sig += (*r as f64).powi(2);
            err += (o as f64 - *r as f64).powi(2);
        }
        let s = 10.0 * (sig / err.max(1e-30)).log10();
        if s > best.0 {
            best = (s, shift);
        }
    }
    best
}

#[test]
fn a_voice_note_in_every_format_decodes_as_the_reference_decoders_do() {
    let limits = AudioLimits::default();
    // Ogg Opus at 48 kHz against libopus (opusdec), then at 16 kHz for Whisper.
    let ours = decode_native(&read("speech.opus"), &limits).unwrap();
    assert_eq!((ours.codec, ours.source_channels, ours.source_rate), ("opus", 1, 48_000));
    let (want, rate) = reference("opusdec", &["--quiet", "--rate", "48000"], "speech.opus");
    assert_eq!(rate, 48_000);
    assert!(ours.samples.len().abs_diff(want.len()) <= 960, "{} vs {}", ours.samples.len(), want.len());
    let (s, shift) = snr(&ours.samples, &want, 8);
    eprintln!("opus: {} samples, SNR {s:.1} dB against opusdec at offset {shift}", ours.samples.len());
    assert!(s > 50.0 && shift == 0, "SNR {s:.1} dB at offset {shift}");
    let at16k = decode(&read("speech.opus"), &limits).unwrap();
    assert_eq!(at16k.samples, resample(&ours.samples, 48_000).unwrap());

    // WAV and FLAC (lossless): the same 22,050 Hz PCM, so the same 16 kHz samples.
    let wav = decode(&read("speech.wav"), &limits).unwrap();
    let flac = decode(&read("speech.flac"), &limits).unwrap();
    assert_eq!((wav.codec, flac.codec, wav.source_rate), ("wav", "flac", 22_050));
    assert_eq!(wav.samples, flac.samples);
    let (pcm, rate) = parse_wav16(&read("speech.wav"));
    assert_eq!(wav.samples, resample(&pcm, rate).unwrap(), "the WAV's own samples, resampled");
    assert_eq!(wav.samples.len(), (pcm.len() * 16_000).div_ceil(22_050));
    let (flac_ref, _) = reference("flac", &["--silent", "-f", "-d"], "speech.flac");
    assert_eq!(flac_ref, pcm, "flac -d gives the WAV back");
    assert!((wav.seconds() - 2.531).abs() < 0.01, "{}", wav.seconds());

    // MP3 against LAME's decoder, at the file's rate.
    let mp3 = decode_native(&read("speech.mp3"), &limits).unwrap();
    let (lame, rate) = reference("lame", &["--quiet", "--decode"], "speech.mp3");
    assert_eq!((mp3.codec, mp3.source_rate), ("mp3", rate));
    let (s, shift) = snr(&mp3.samples, &lame, 1200);
    eprintln!("mp3: {} samples, SNR {s:.1} dB against lame at offset {shift}", mp3.samples.len());
    // LAME's decoder drops the encoder's delay (529 samples, from its header); symphonia keeps it.
    assert!(s > 60.0 && shift == 529, "SNR {s:.1} dB at offset {shift}");
}

#[test]
fn files_cut_short_too_long_too_large_or_not_audio_are_refused() {
    let limits = AudioLimits::default();
    for name in ["speech.opus", "speech.mp3", "speech.flac", "speech.wav"] {
        let whole = read(name);
        for cut in [12, 44, 200, whole.len() / 2] {
            // Decoded up to the cut, or refused: never a panic.
            match decode(&whole[..cut], &limits) {
                Ok(a) => assert!(a.seconds() < 2.6, "{name} cut at {cut}"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        let short = AudioLimits { max_bytes: 25 << 20, max_seconds: 1 };
        assert_eq!(decode(&whole, &short).unwrap_err(), AudioError::TooLong { max_seconds: 1 }, "{name}");
    }
    let big = vec![0u8; 26 * 1024 * 1024];
    assert!(matches!(decode(&big, &limits), Err(AudioError::TooLarge { .. })));
    assert!(decode(b"RIFF\x10\x00\x00\x00WAVEfmt \x02\x00\x00\x00\x01\x00", &limits).is_err(), "a broken header");
    assert!(matches!(decode(&read("README.md"), &limits), Err(AudioError::Format(_))));
    assert_eq!(decode(b"", &limits).unwrap_err(), AudioError::Empty);
}
