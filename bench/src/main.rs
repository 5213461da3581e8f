//! `make bench` (engine part): prefill and decode throughput of the Burn engine
//! on the demo model (SmolLM2-135M-Instruct Q4_1 GGUF), batch 1, 8 and 32, with
//! the weights packed (as served) and widened to f32 (the reference), next to
//! candle's quantized Llama on the same file in the same run.
//!
//! Both runtimes get the same prompt ids and use every core. Prefill is timed
//! from ids to last-position logits on the host; decode steps feed the greedy
//! token back and include reading the logits, so nothing is left queued.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::Tensor;
use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use cocoon_engine::quant::{PackedLinear, PackedMatrix, QuantKind};
use cocoon_engine::sampling::argmax;
use cocoon_engine::tokenizer::TextCodec;
use cocoon_engine::{CpuBackend, WeightLayout, default_model_path, load_with};

const PROMPT_TOKENS: usize = 128;
const DECODE_STEPS: usize = 32;
const BATCHES: [usize; 3] = [1, 8, 32];

fn burn_label(layout: WeightLayout) -> &'static str {
    match layout {
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
    rows: Vec<Row>,
    codec: TextCodec,
    france: Vec<u32>,
}

fn burn(path: &Path, layout: WeightLayout) -> anyhow::Result<Burned> {
    let started = Instant::now();
    let loaded = load_with::<CpuBackend>(path, None, 1024, &Default::default(), layout)?;
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
        let t = Instant::now();
        for _ in 0..DECODE_STEPS {
            let mut refs: Vec<_> = caches.iter_mut().collect();
            next = rows(model.decode(&next, &mut refs)).iter().map(|l| argmax(l)).collect();
        }
        let decode = (batch * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64();
        out.push(Row { runtime: burn_label(layout), batch, prefill, decode });
    }
    Ok(Burned { ids, rows: out, codec: loaded.codec, france: france_ids })
}

/// candle's quantized Llama on the same file, in one of its two modes: `dequantize`
/// false runs its Q4_1 kernels (activations quantised to 8 bits, like llama.cpp);
/// true (`CANDLE_DEQUANTIZE_ALL`) dequantises the weights to f32 at load, which is
/// the arithmetic this engine does.
#[cfg(feature = "candle")]
fn candle_mode(path: &Path, ids: &[u32], france: &[u32], dequantize: bool) -> anyhow::Result<(Vec<u32>, Vec<Row>)> {
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
    let mut warm = load()?;
    let mut t = greedy(&warm.forward(&Tensor::new(france, &device)?.unsqueeze(0)?, 0)?)?[0];
    let mut answer = Vec::new();
    while t != 2 && answer.len() < 16 {
        answer.push(t);
        let x = Tensor::new(&[t], &device)?.unsqueeze(0)?;
        t = greedy(&warm.forward(&x, france.len() + answer.len() - 1)?)?[0];
    }
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
        let t = Instant::now();
        for step in 0..DECODE_STEPS {
            let x = Tensor::new(next.as_slice(), &device)?.unsqueeze(1)?;
            next = greedy(&model.forward(&x, PROMPT_TOKENS + step)?)?;
        }
        let decode = (batch * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64();
        out.push(Row { runtime: label, batch, prefill, decode });
    }
    Ok((answer, out))
}

#[cfg(feature = "candle")]
fn candle(path: &Path, ids: &[u32], france: &[u32], codec: &TextCodec) -> anyhow::Result<Vec<Row>> {
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
        println!("{:<22} {:?}", format!("{} answer:", r[0].runtime), codec.decode(&answer).unwrap_or_default());
        rows.extend(r);
    }
    Ok(rows)
}

#[cfg(not(feature = "candle"))]
fn candle(_: &Path, _: &[u32], _: &[u32], _: &TextCodec) -> anyhow::Result<Vec<Row>> {
    eprintln!("candle: not built (run with --features candle, as `make bench` does)");
    Ok(Vec::new())
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

/// Matrix-vector and 8-row products of a 2048x2048 matrix in each block format,
/// next to Burn's f32 product of the same weights widened (the dense layout).
fn kernels() -> anyhow::Result<()> {
    const DIM: usize = 2048;
    const REPEAT: usize = 100;
    let device = Default::default();
    println!(
        "\nPacked kernels, {DIM}x{DIM} weights, {REPEAT} products each (weights GB/s = stored bytes read per second)"
    );
    println!("{:<6} {:>5} {:>12} {:>12} {:>16} {:>8}", "format", "rows", "packed ms", "f32 ms", "packed GB/s", "ratio");
    for kind in QuantKind::ALL {
        let linear = PackedLinear::new(vec![random_blocks(kind, DIM, DIM)?])?;
        let dense: Tensor<CpuBackend, 2> =
            Tensor::<CpuBackend, 2>::from_data(TensorData::new(linear.dequantize(), [DIM, DIM]), &device).transpose();
        let dense = Tensor::<CpuBackend, 2>::from_data(dense.into_data(), &device);
        for n in [1, 8] {
            let x: Vec<f32> = (0..n * DIM).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            linear.forward(&x, n);
            let t = Instant::now();
            for _ in 0..REPEAT {
                std::hint::black_box(linear.forward(&x, n));
            }
            let packed = t.elapsed().as_secs_f64() / REPEAT as f64;
            let xt = Tensor::<CpuBackend, 2>::from_data(TensorData::new(x.clone(), [n, DIM]), &device);
            let t = Instant::now();
            for _ in 0..REPEAT {
                let y: Vec<f32> = xt.clone().matmul(dense.clone()).into_data().to_vec().expect("f32");
                std::hint::black_box(y);
            }
            let f32_s = t.elapsed().as_secs_f64() / REPEAT as f64;
            println!(
                "{:<6} {:>5} {:>12.3} {:>12.3} {:>16.2} {:>7.2}x",
                format!("{kind:?}"),
                n,
                packed * 1e3,
                f32_s * 1e3,
                linear.bytes() as f64 / packed / 1e9,
                f32_s / packed
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let path: PathBuf = default_model_path(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    anyhow::ensure!(path.exists(), "{} is missing: run scripts/fetch-model.sh", path.display());
    // `--kernels`: the kernel table alone; `--packed-only`: the served layout
    // alone, for quick iterations.
    if std::env::args().any(|a| a == "--kernels") {
        return kernels();
    }
    let quick = std::env::args().any(|a| a == "--packed-only");
    let reference =
        if quick { None } else { Some(burn(&path, WeightLayout::Dense).context("burn engine, f32 weights")?) };
    let b = burn(&path, WeightLayout::Packed).context("burn engine, packed weights")?;
    let theirs = if quick { Vec::new() } else { candle(&path, &b.ids, &b.france, &b.codec).context("candle")? };
    let ours = b.rows;
    let theirs: Vec<Row> = reference.into_iter().flat_map(|r| r.rows).chain(theirs).collect();
    println!(
        "\nSmolLM2-135M-Instruct Q4_1, {PROMPT_TOKENS}-token prompt, {DECODE_STEPS} decode steps, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<28} {:>5} {:>14} {:>14}", "runtime", "batch", "prefill tok/s", "decode tok/s");
    for r in ours.iter().chain(&theirs) {
        println!("{:<28} {:>5} {:>14.1} {:>14.1}", r.runtime, r.batch, r.prefill, r.decode);
    }
    println!("\nratios (burn packed / other):");
    for b in &theirs {
        if let Some(a) = ours.iter().find(|a| a.batch == b.batch) {
            println!(
                "  vs {:<26} batch {}: prefill {:.2}x, decode {:.2}x",
                b.runtime,
                b.batch,
                a.prefill / b.prefill,
                a.decode / b.decode
            );
        }
    }
    kernels()
}
