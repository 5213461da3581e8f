//! `engine-bench --asr`: Whisper tiny.en transcribing 30 s of speech here and
//! in CTranslate2 (faster-whisper's runtime, greedy, f32, the same threads)
//! on the same samples, side by side: seconds, real-time factor, peak
//! resident memory, and whether the tokens agree.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use cocoon_engine::CpuBackend;
use cocoon_engine::asr::audio::{AudioLimits, decode};
use cocoon_engine::asr::whisper::WhisperModel;

const ROUNDS: usize = 3;

#[derive(serde::Deserialize)]
struct Ct2Run {
    seconds: f64,
    windows: Vec<Vec<u32>>,
    peak_bytes: u64,
}

/// The peak resident set of this process (VmHWM), in bytes.
fn peak_resident() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

pub fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join(".cache/models/whisper-tiny-en");
    anyhow::ensure!(dir.join("model.bin").exists(), "{} is missing: run scripts/fetch-whisper.sh", dir.display());
    let clip =
        decode(&std::fs::read(root.join("engine/tests/data/audio/speech.opus"))?, &AudioLimits::default())?.samples;
    // Voice notes with half a second between them, as many as one 30 s window holds.
    let mut samples = Vec::new();
    let mut notes = 0;
    while samples.len() + clip.len() + 8_000 <= 30 * 16_000 {
        samples.extend_from_slice(&clip);
        samples.extend(std::iter::repeat_n(0.0, 8_000));
        notes += 1;
    }
    let seconds = samples.len() as f64 / 16_000.0;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let started = Instant::now();
    let model = WhisperModel::<CpuBackend>::load(&dir, &Default::default()).context("loading Whisper")?;
    let load = started.elapsed();
    let warm = model.transcribe(&samples)?;
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let again = model.transcribe(&samples)?;
        best = best.min(t.elapsed().as_secs_f64());
        anyhow::ensure!(again == warm, "the transcript changed between rounds");
    }
    let ours_peak = peak_resident();
    let ours_tokens: Vec<Vec<u32>> = warm.iter().map(|w| w.tokens.clone()).collect();

    let theirs = match (std::env::var_os("WHISPER_CT2_PYTHON"), std::env::var_os("FASTER_WHISPER_DIR")) {
        (Some(python), Some(fw)) => {
            let input = std::env::temp_dir().join(format!("cocoon-asr-bench-{}.f32", std::process::id()));
            std::fs::write(&input, samples.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
            let out = std::process::Command::new(python)
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("whisper_ct2_bench.py"))
                .arg(fw)
                .arg(&dir)
                .arg(&input)
                .args([threads.to_string(), ROUNDS.to_string()])
                .output()
                .context("running bench/whisper_ct2_bench.py")?;
            let _ = std::fs::remove_file(&input);
            anyhow::ensure!(out.status.success(), "whisper_ct2_bench.py: {}", String::from_utf8_lossy(&out.stderr));
            Some(serde_json::from_slice::<Ct2Run>(&out.stdout).context("whisper_ct2_bench.py's output")?)
        }
        _ => {
            eprintln!(
                "CTranslate2: WHISPER_CT2_PYTHON and FASTER_WHISPER_DIR are not set (make bench sets them); skipped"
            );
            None
        }
    };

    println!("\n## Whisper tiny.en, {seconds:.1} s of speech ({notes} voice notes), greedy, {threads} threads\n");
    println!("| runtime | seconds | real-time factor | peak RSS |");
    println!("|---|---|---|---|");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "| cocoon engine (Burn, f32; load {:.2} s) | {best:.2} | {:.3} | {:.0} MiB |",
        load.as_secs_f64(),
        best / seconds,
        mib(ours_peak)
    );
    if let Some(t) = &theirs {
        println!(
            "| CTranslate2 4.6.0 (f32) | {:.2} | {:.3} | {:.0} MiB |",
            t.seconds,
            t.seconds / seconds,
            mib(t.peak_bytes)
        );
        println!(
            "\nreal-time factor ours / CTranslate2: {:.2}; the tokens {}",
            best / t.seconds,
            if t.windows == ours_tokens { "agree" } else { "DIFFER" }
        );
    }
    println!("transcript: {:?}", warm.iter().map(|w| w.text.as_str()).collect::<String>());
    Ok(())
}
