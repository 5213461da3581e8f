//! `make bench` (engine part): prefill and decode throughput of the Burn engine
//! on the demo model (SmolLM2-135M-Instruct Q4_1 GGUF), batch 1, 8 and 32, with
//! the weights packed (as served) and widened to f32 (the reference), next to
//! llama.cpp (`bench/llama_cpp_bench.py` on llama-cpp-python, when
//! `LLAMA_CPP_PYTHON` names a Python that has it, as `make bench` arranges)
//! and candle's quantized Llama on the same file in the same run; then time to
//! first token and inter-token latency of 8 streams while a long prompt
//! arrives, with the prompt prefilled in chunks and in one piece.
//!
//! All runtimes get the same prompt ids and use every core. Prefill is timed
//! from ids to last-position logits on the host; decode steps feed the greedy
//! token back and include reading the logits, so nothing is left queued.
//! Peak memory is the resident set's growth while a runtime loads and runs
//! (sampled after each phase here; for llama.cpp, in its own process, its
//! high-water mark less its resident set before loading).

mod asr;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use burn::tensor::Tensor;
use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use cocoon_engine::quant::{PackedLinear, PackedMatrix, QuantKind};
use cocoon_engine::sampling::argmax;
use cocoon_engine::tokenizer::TextCodec;
use cocoon_engine::{
    BatchOptions, BurnEngine, CpuBackend, Engine, GenerationRequest, Prompt, WeightLayout, default_model_path,
    load_with,
};

const PROMPT_TOKENS: usize = 128;
const DECODE_STEPS: usize = 32;
/// Rounds of `DECODE_STEPS` the Burn engine and llama.cpp decode, one after
/// another; the fastest is reported. On this shared 2-core VM a round could
/// lose a third of its time to other tenants (steal time of 20-30% seen
/// while benchmarking), which one round alone would have reported as the
/// engine's speed. candle's rows keep one round: its Q4_1 kernels take
/// minutes a round at batch 32.
const DECODE_ROUNDS: usize = 3;
const BATCHES: [usize; 3] = [1, 8, 32];

fn burn_label(layout: WeightLayout) -> &'static str {
    match layout {
        WeightLayout::PackedInt16 => "burn (packed, i16 dots)",
        WeightLayout::Packed => "burn (packed Q4_1/Q8_0)",
        WeightLayout::Dense => "burn (f32 weights)",
    }
}

struct Row {
    runtime: &'static str,
    batch: usize,
    prefill: f64,
    decode: f64,
}

/// A runtime's rows and the growth of the resident set while it ran.
struct Measured {
    rows: Vec<Row>,
    peak_bytes: u64,
}

/// This process's resident set now (Linux `/proc/self/statm`; 0 elsewhere).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

/// The highest resident set seen, above the level when it was made.
struct RssWatch {
    base: u64,
    peak: u64,
}

impl RssWatch {
    fn start() -> Self {
        let base = resident_bytes();
        RssWatch { base, peak: base }
    }
    fn sample(&mut self) {
        self.peak = self.peak.max(resident_bytes());
    }
    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.base)
    }
}

fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    cocoon_engine::model::logits_rows(t).expect("f32 logits")
}

fn prompt(codec: &TextCodec) -> anyhow::Result<Vec<u32>> {
    let text = "Confidential computing protects data in use by running computations in a hardware-based, \
                attested trusted execution environment. ";
    let mut ids = codec.encode_text(&text.repeat(16)).map_err(anyhow::Error::msg)?;
    ids.truncate(PROMPT_TOKENS);
    anyhow::ensure!(ids.len() == PROMPT_TOKENS, "the bench prompt is too short");
    Ok(ids)
}

/// The question every implementation must answer "The capital of France is Paris.".
fn france(codec: &TextCodec) -> anyhow::Result<Vec<u32>> {
    let msg = cocoon_engine::ChatMessage {
        role: cocoon_engine::Role::User,
        content: "What is the capital of France?".into(),
    };
    codec.encode_chat(&codec.render_chat(&[msg]).map_err(anyhow::Error::msg)?).map_err(anyhow::Error::msg)
}

struct Burned {
    ids: Vec<u32>,
    measured: Measured,
    codec: TextCodec,
    france: Vec<u32>,
}

fn burn(path: &Path, layout: WeightLayout) -> anyhow::Result<Burned> {
    let started = Instant::now();
    let mut rss = RssWatch::start();
    let loaded = load_with::<CpuBackend>(path, None, 1024, &Default::default(), layout)?;
    rss.sample();
    eprintln!("{}: loaded in {:.1} s", burn_label(layout), started.elapsed().as_secs_f64());
    let ids = prompt(&loaded.codec)?;
    let france_ids = france(&loaded.codec)?;
    let model = &loaded.model;
    let mut cache = model.new_cache();
    let mut t = argmax(&rows(model.prefill(&france_ids, &mut cache, false))[0]);
    let mut answer = Vec::new();
    while !loaded.codec.is_stop(t) && answer.len() < 16 {
        answer.push(t);
        t = argmax(&rows(model.decode(&[t], &mut [&mut cache]))[0]);
    }
    println!(
        "{:<22} {:?}",
        format!("{} answer:", burn_label(layout)),
        loaded.codec.decode(&answer).map_err(anyhow::Error::msg)?
    );
    // Warm-up: first calls allocate and spin up the thread pool.
    let mut warm = model.new_cache();
    rows(model.prefill(&ids[..16], &mut warm, false));
    let mut out = Vec::new();
    for batch in BATCHES {
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        let t = Instant::now();
        let mut next: Vec<u32> = caches.iter_mut().map(|c| argmax(&rows(model.prefill(&ids, c, false))[0])).collect();
        let prefill = (batch * PROMPT_TOKENS) as f64 / t.elapsed().as_secs_f64();
        rss.sample();
        let mut decode = 0f64;
        for _ in 0..DECODE_ROUNDS {
            let t = Instant::now();
            for _ in 0..DECODE_STEPS {
                let mut refs: Vec<_> = caches.iter_mut().collect();
                next = rows(model.decode(&next, &mut refs)).iter().map(|l| argmax(l)).collect();
            }
            decode = decode.max((batch * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64());
        }
        rss.sample();
        out.push(Row { runtime: burn_label(layout), batch, prefill, decode });
    }
    let measured = Measured { rows: out, peak_bytes: rss.growth() };
    Ok(Burned { ids, measured, codec: loaded.codec, france: france_ids })
}

/// candle's quantized Llama on the same file, in one of its two modes: `dequantize`
/// false runs its Q4_1 kernels (activations quantised to 8 bits, like llama.cpp);
/// true (`CANDLE_DEQUANTIZE_ALL`) dequantises the weights to f32 at load, which is
/// the arithmetic this engine does.
#[cfg(feature = "candle")]
fn candle_mode(path: &Path, ids: &[u32], france: &[u32], dequantize: bool) -> anyhow::Result<(Vec<u32>, Measured)> {
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};
    use candle_transformers::models::quantized_llama::ModelWeights;

    let device = Device::Cpu;
    let label = if dequantize { "candle (f32 dequantised)" } else { "candle (Q4_1 kernels)" };
    let load = || -> anyhow::Result<ModelWeights> {
        let mut file = std::fs::File::open(path)?;
        let content = gguf_file::Content::read(&mut file)?;
        Ok(ModelWeights::from_gguf(content, &mut file, &device)?)
    };
    let greedy = |logits: &Tensor| -> anyhow::Result<Vec<u32>> {
        Ok(logits.to_vec2::<f32>()?.iter().map(|l| argmax(l)).collect())
    };
    let mut rss = RssWatch::start();
    let mut warm = load()?;
    rss.sample();
    let mut t = greedy(&warm.forward(&Tensor::new(france, &device)?.unsqueeze(0)?, 0)?)?[0];
    let mut answer = Vec::new();
    while t != 2 && answer.len() < 16 {
        answer.push(t);
        let x = Tensor::new(&[t], &device)?.unsqueeze(0)?;
        t = greedy(&warm.forward(&x, france.len() + answer.len() - 1)?)?[0];
    }
    drop(warm);
    let mut out = Vec::new();
    for batch in BATCHES {
        let mut model = load()?;
        let input = Tensor::new(ids, &device)?.unsqueeze(0)?.repeat((batch, 1))?;
        let t = Instant::now();
        let mut next = if batch == 1 {
            greedy(&model.forward(&input, 0)?)?
        } else {
            // candle 0.11 cannot finish a batched prefill: its output projection needs a
            // contiguous input and the batch's last-position slice is not. So the prompt
            // less its last token runs batched (every layer runs and fills the cache
            // before that error), then the last token runs as a batched step.
            let _ = model.forward(&input.narrow(1, 0, PROMPT_TOKENS - 1)?, 0);
            greedy(&model.forward(&input.narrow(1, PROMPT_TOKENS - 1, 1)?, PROMPT_TOKENS - 1)?)?
        };
        let prefill = (batch * PROMPT_TOKENS) as f64 / t.elapsed().as_secs_f64();
        rss.sample();
        let t = Instant::now();
        for step in 0..DECODE_STEPS {
            let x = Tensor::new(next.as_slice(), &device)?.unsqueeze(1)?;
            next = greedy(&model.forward(&x, PROMPT_TOKENS + step)?)?;
        }
        let decode = (batch * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64();
        rss.sample();
        out.push(Row { runtime: label, batch, prefill, decode });
    }
    Ok((answer, Measured { rows: out, peak_bytes: rss.growth() }))
}

#[cfg(feature = "candle")]
#[allow(unsafe_code)] // set_var before candle's threads read it
fn candle(path: &Path, ids: &[u32], france: &[u32], codec: &TextCodec) -> anyhow::Result<Vec<Measured>> {
    let mut rows = Vec::new();
    for dequantize in [true, false] {
        // candle reads CANDLE_DEQUANTIZE_ALL once per thread, when it first loads a
        // weight: each mode runs on a fresh thread with the variable set or unset.
        // SAFETY: no other thread reads or writes the environment at this point
        // (the Burn engine is idle and its thread pool does not touch it).
        unsafe {
            if dequantize {
                std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
            } else {
                std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
            }
        }
        let (answer, r) = std::thread::scope(|s| s.spawn(|| candle_mode(path, ids, france, dequantize)).join())
            .map_err(|_| anyhow::anyhow!("candle panicked"))??;
        println!("{:<22} {:?}", format!("{} answer:", r.rows[0].runtime), codec.decode(&answer).unwrap_or_default());
        rows.push(r);
    }
    Ok(rows)
}

#[cfg(not(feature = "candle"))]
fn candle(_: &Path, _: &[u32], _: &[u32], _: &TextCodec) -> anyhow::Result<Vec<Measured>> {
    eprintln!("candle: not built (run with --features candle, as `make bench` does)");
    Ok(Vec::new())
}

fn joined(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[derive(serde::Deserialize)]
struct LlamaRow {
    batch: usize,
    prefill: f64,
    decode: f64,
}

#[derive(serde::Deserialize)]
struct LlamaRun {
    answer: Vec<u32>,
    rows: Vec<LlamaRow>,
    peak_bytes: u64,
}

/// llama.cpp through `bench/llama_cpp_bench.py`, in its own process, with its
/// repacked weight layouts (AMX/AVX) first and without them if that run dies.
fn llama_cpp(path: &Path, ids: &[u32], france: &[u32], codec: &TextCodec) -> anyhow::Result<Option<Measured>> {
    let Some(python) = std::env::var_os("LLAMA_CPP_PYTHON") else {
        eprintln!("llama.cpp: LLAMA_CPP_PYTHON is not set (make bench sets it); skipped");
        return Ok(None);
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("llama_cpp_bench.py");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let batches = BATCHES.map(|b| b.to_string()).join(",");
    for (extra_bufts, label) in [("1", "llama.cpp (Q4_1)"), ("0", "llama.cpp (Q4_1, no repack)")] {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(path)
            .args([&threads, &DECODE_STEPS.to_string(), &batches, &joined(ids), &joined(france), extra_bufts])
            .arg(DECODE_ROUNDS.to_string())
            .stderr(std::process::Stdio::null())
            .output()
            .context("running bench/llama_cpp_bench.py")?;
        if !out.status.success() {
            eprintln!(
                "llama.cpp with extra_bufts={extra_bufts} failed ({}); retrying without its repacked layouts",
                out.status
            );
            continue;
        }
        let run: LlamaRun = serde_json::from_slice(&out.stdout).context("llama_cpp_bench.py's output")?;
        println!("{:<22} {:?}", format!("{label} answer:"), codec.decode(&run.answer).unwrap_or_default());
        let rows =
            run.rows.into_iter().map(|r| Row { runtime: label, batch: r.batch, prefill: r.prefill, decode: r.decode });
        return Ok(Some(Measured { rows: rows.collect(), peak_bytes: run.peak_bytes }));
    }
    anyhow::bail!("llama.cpp failed both with and without its repacked layouts")
}

/// Latency percentiles of one mixed-load run.
struct Latency {
    label: String,
    long_ttft: Duration,
    itl_p50: Duration,
    itl_p99: Duration,
    itl_max: Duration,
    stream_tokens: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

const STREAMS: usize = 8;
const LONG_PROMPT: usize = 1024;

/// 8 greedy streams decode; once each has sent a few pieces, a
/// `LONG_PROMPT`-token prompt arrives. Inter-token gaps are those of the
/// streams while the long prompt is in flight (arrival to first token).
fn mixed_load(path: &Path, prefill_chunk: usize) -> anyhow::Result<Latency> {
    let loaded = load_with::<CpuBackend>(path, None, 2048, &Default::default(), WeightLayout::PackedInt16)?;
    let text = "Confidential computing protects data in use by running computations in a hardware-based, \
                attested trusted execution environment. ";
    let mut long_ids = loaded.codec.encode_text(&text.repeat(64)).map_err(anyhow::Error::msg)?;
    long_ids.truncate(LONG_PROMPT);
    let long_text = loaded.codec.decode(&long_ids).map_err(anyhow::Error::msg)?;
    let options = BatchOptions { max_batch: STREAMS + 1, prefill_chunk, max_prefixes: 0, ..BatchOptions::default() };
    let engine = BurnEngine::start(loaded, "bench".into(), options)?;
    let greedy = |prompt: String, max_tokens| GenerationRequest::greedy(Prompt::Text(prompt), max_tokens);
    let stream = greedy("Count from one to one thousand: one, two, three,".into(), 1500);
    let times: Vec<Mutex<Vec<Instant>>> = (0..STREAMS).map(|_| Mutex::new(Vec::new())).collect();
    // The streams stop one decoding step after the long prompt's first token.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (arrived, first) = std::thread::scope(|s| -> anyhow::Result<(Instant, Instant)> {
        let handles: Vec<_> = times
            .iter()
            .map(|t| {
                let (engine, stream, stop) = (&engine, &stream, &stop);
                s.spawn(move || {
                    engine.generate(stream, &mut |_| {
                        t.lock().unwrap().push(Instant::now());
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })
                })
            })
            .collect();
        while times.iter().any(|t| t.lock().unwrap().len() < 8) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let arrived = Instant::now();
        let mut first = None;
        engine.generate(&greedy(long_text, 1), &mut |_| {
            first.get_or_insert_with(Instant::now);
            ControlFlow::Continue(())
        })?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in handles {
            match h.join().map_err(|_| anyhow::anyhow!("a stream panicked"))? {
                Ok(_) | Err(cocoon_engine::EngineError::Cancelled { .. }) => {}
                Err(e) => anyhow::bail!("a stream failed: {e}"),
            }
        }
        Ok((arrived, first.context("the long prompt produced no text")?))
    })?;
    // Every gap of a stream that overlaps the long prompt's time in flight,
    // including the one that spans its arrival and the one that ends after
    // its first token (those two are what prefilling in one piece stretches).
    let mut gaps: Vec<Duration> = Vec::new();
    let mut stream_tokens = 0;
    for t in &times {
        let t = t.lock().unwrap();
        stream_tokens += t.iter().filter(|&&x| x > arrived && x <= first).count();
        gaps.extend(t.windows(2).filter(|w| w[1] > arrived && w[0] < first).map(|w| w[1] - w[0]));
    }
    gaps.sort();
    let label =
        if prefill_chunk >= LONG_PROMPT { "one piece".to_string() } else { format!("chunks of {prefill_chunk}") };
    Ok(Latency {
        label,
        long_ttft: first - arrived,
        itl_p50: percentile(&gaps, 0.5),
        itl_p99: percentile(&gaps, 0.99),
        itl_max: gaps.last().copied().unwrap_or_default(),
        stream_tokens,
    })
}

/// One prompt of `n` tokens prefilled whole and in chunks of 64 (packed).
fn long_prefill(path: &Path, n: usize) -> anyhow::Result<()> {
    let loaded = load_with::<CpuBackend>(path, None, 4096, &Default::default(), WeightLayout::PackedInt16)?;
    let text = "Confidential computing protects data in use. ".repeat(n);
    let mut ids = loaded.codec.encode_text(&text).map_err(anyhow::Error::msg)?;
    ids.truncate(n);
    let model = &loaded.model;
    rows(model.prefill(&ids[..16], &mut model.new_cache(), false));
    for chunk in [n, 256, 64] {
        let mut cache = model.new_cache();
        let t = Instant::now();
        for piece in ids.chunks(chunk) {
            rows(model.prefill(piece, &mut cache, false));
        }
        println!("{n} tokens in chunks of {chunk}: {:.1} tok/s", n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(())
}

fn latency_table(path: &Path) -> anyhow::Result<()> {
    println!(
        "\nMixed load: {STREAMS} streams decoding, a {LONG_PROMPT}-token prompt arrives (burn packed, latencies while it is prefilled)"
    );
    println!(
        "{:<16} {:>14} {:>12} {:>12} {:>12} {:>15}",
        "prefill", "long TTFT ms", "ITL p50 ms", "ITL p99 ms", "ITL max ms", "stream tokens"
    );
    for chunk in [64, 256, LONG_PROMPT] {
        let l = mixed_load(path, chunk)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<16} {:>14.0} {:>12.1} {:>12.1} {:>12.1} {:>15}",
            l.label,
            ms(l.long_ttft),
            ms(l.itl_p50),
            ms(l.itl_p99),
            ms(l.itl_max),
            l.stream_tokens
        );
    }
    Ok(())
}

/// Random blocks of `kind` with every quant bit random and small finite f16
/// scales at the format's scale offsets (xorshift: the bench needs no rand).
fn random_blocks(kind: QuantKind, rows: usize, cols: usize) -> anyhow::Result<PackedMatrix> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bb = kind.block_bytes();
    let mut data: Vec<u8> = (0..rows * cols / kind.block_elements() * bb)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.002).to_le_bytes();
    for block in data.chunks_exact_mut(bb) {
        for &o in kind.scale_offsets() {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    Ok(PackedMatrix::new(kind, rows, cols, data)?)
}

/// Matrix-vector, 4-row and 8-row products of a 2048x2048 matrix in each
/// block format: packed with f32 activations, packed with 16-bit integer activations
/// (Q8_0/Q4_0/Q4_1, up to the fused kernel's four rows), and Burn's f32
/// product of the same weights widened (the dense layout).
fn kernels() -> anyhow::Result<()> {
    const DIM: usize = 2048;
    const REPEAT: usize = 100;
    let device = Default::default();
    println!(
        "\nPacked kernels, {DIM}x{DIM} weights, {REPEAT} products each (weights GB/s = stored bytes read per second)"
    );
    println!(
        "{:<6} {:>5} {:>10} {:>10} {:>10} {:>12} {:>9} {:>9}",
        "format", "rows", "packed ms", "int16 ms", "f32 ms", "packed GB/s", "f32/pack", "pack/i16"
    );
    let time = |f: &dyn Fn()| {
        f();
        let t = Instant::now();
        for _ in 0..REPEAT {
            f();
        }
        t.elapsed().as_secs_f64() / REPEAT as f64
    };
    for kind in QuantKind::ALL {
        let linear = PackedLinear::new(vec![random_blocks(kind, DIM, DIM)?])?;
        let int16 = linear.clone().with_int16_activations(true);
        let dense: Tensor<CpuBackend, 2> =
            Tensor::<CpuBackend, 2>::from_data(TensorData::new(linear.dequantize(), [DIM, DIM]), &device).transpose();
        let dense = Tensor::<CpuBackend, 2>::from_data(dense.into_data(), &device);
        for n in [1, 4, 8] {
            let x: Vec<f32> = (0..n * DIM).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let packed = time(&|| {
                std::hint::black_box(linear.forward(&x, n));
            });
            let int16_s = (matches!(kind, QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q4_1)).then(|| {
                time(&|| {
                    std::hint::black_box(int16.forward(&x, n));
                })
            });
            let xt = Tensor::<CpuBackend, 2>::from_data(TensorData::new(x.clone(), [n, DIM]), &device);
            let f32_s = time(&|| {
                let y: Vec<f32> = xt.clone().matmul(dense.clone()).into_data().to_vec().expect("f32");
                std::hint::black_box(y);
            });
            let dash = || "-".to_string();
            println!(
                "{:<6} {:>5} {:>10.3} {:>10} {:>10.3} {:>12.2} {:>8.2}x {:>9}",
                format!("{kind:?}"),
                n,
                packed * 1e3,
                int16_s.map_or_else(dash, |t| format!("{:.3}", t * 1e3)),
                f32_s * 1e3,
                linear.bytes() as f64 / packed / 1e9,
                f32_s / packed,
                int16_s.map_or_else(dash, |t| format!("{:.2}x", packed / t)),
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let path: PathBuf = default_model_path(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    anyhow::ensure!(path.exists(), "{} is missing: run scripts/fetch-model.sh", path.display());
    // `--kernels`: the kernel table alone; `--packed-only`: the two packed
    // layouts alone, for quick iterations.
    if std::env::args().any(|a| a == "--kernels") {
        return kernels();
    }
    if let Some(n) = std::env::args().skip_while(|a| a != "--long-prefill").nth(1) {
        return long_prefill(&path, n.parse()?);
    }
    if std::env::args().any(|a| a == "--latency") {
        return latency_table(&path);
    }
    if std::env::args().any(|a| a == "--asr") {
        return asr::run();
    }
    let quick = std::env::args().any(|a| a == "--packed-only");
    let reference =
        if quick { None } else { Some(burn(&path, WeightLayout::Dense).context("burn engine, f32 weights")?) };
    // The served layout (16-bit integer activations) and, for comparison,
    // the same packed weights with f32 activations.
    let exact = burn(&path, WeightLayout::Packed).context("burn engine, packed")?;
    let b = burn(&path, WeightLayout::PackedInt16).context("burn engine, packed weights, i16 dots")?;
    let mut theirs: Vec<Measured> = std::iter::once(exact).chain(reference).map(|r| r.measured).collect();
    if !quick {
        theirs.extend(llama_cpp(&path, &b.ids, &b.france, &b.codec).context("llama.cpp")?);
        theirs.extend(candle(&path, &b.ids, &b.france, &b.codec).context("candle")?);
    }
    let ours = b.measured;
    println!(
        "\nSmolLM2-135M-Instruct Q4_1, {PROMPT_TOKENS}-token prompt, {DECODE_STEPS} decode steps \
         (burn, llama.cpp: fastest of {DECODE_ROUNDS} rounds), {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<28} {:>5} {:>14} {:>14} {:>10}", "runtime", "batch", "prefill tok/s", "decode tok/s", "peak MB");
    for m in std::iter::once(&ours).chain(&theirs) {
        for (i, r) in m.rows.iter().enumerate() {
            let peak = if i == 0 { format!("{:.0}", m.peak_bytes as f64 / 1e6) } else { String::new() };
            println!("{:<28} {:>5} {:>14.1} {:>14.1} {:>10}", r.runtime, r.batch, r.prefill, r.decode, peak);
        }
    }
    println!("\nratios (burn packed, i16 dots / other):");
    for b in theirs.iter().flat_map(|m| &m.rows) {
        if let Some(a) = ours.rows.iter().find(|a| a.batch == b.batch) {
            println!(
                "  vs {:<28} batch {:>2}: prefill {:.2}x, decode {:.2}x",
                b.runtime,
                b.batch,
                a.prefill / b.prefill,
                a.decode / b.decode
            );
        }
    }
    goals(&ours, &theirs);
    latency_table(&path)?;
    kernels()
}

/// The goals on this machine, from the rows above.
fn goals(ours: &Measured, theirs: &[Measured]) {
    let find = |m: &Measured, batch| m.rows.iter().find(|r| r.batch == batch).map(|r| (r.prefill, r.decode));
    let by = |prefix: &str| theirs.iter().find(|m| m.rows.first().is_some_and(|r| r.runtime.starts_with(prefix)));
    println!("\ngoals:");
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    if let (Some((_, ours1)), Some((_, llama1))) = (find(ours, 1), by("llama.cpp").and_then(|m| find(m, 1))) {
        let r = ours1 / llama1;
        println!("  decode at batch 1 >= 0.8x llama.cpp: {r:.2}x ({})", verdict(r >= 0.8));
    }
    for candle in ["candle (Q4_1 kernels)", "candle (f32 dequantised)"] {
        if let (Some((ours_p, _)), Some((candle_p, _))) = (find(ours, 1), by(candle).and_then(|m| find(m, 1))) {
            let r = ours_p / candle_p;
            println!("  prefill at batch 1 >= 1.0x {candle}: {r:.2}x ({})", verdict(r >= 1.0));
        }
    }
    if let (Some((_, d1)), Some((_, d8))) = (find(ours, 1), find(ours, 8)) {
        let r = d8 / d1;
        println!("  aggregate decode at batch 8 >= 3x batch 1: {r:.2}x ({})", verdict(r >= 3.0));
    }
}
