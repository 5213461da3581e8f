//! The scheduler on the tiny Qwen3 (packed weights, paged host key/value
//! cache): many sequences through a small pool, chunked prefill next to a
//! running stream, and prefix reuse per client key.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cocoon_engine::{
    BatchOptions, BurnEngine, Completion, CpuBackend, Engine, EngineError, FinishReason, GenerationRequest, PrefixKey,
    Prompt, load,
};

fn tiny_qwen3() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-qwen3")
}

fn engine_at(path: &Path, context: usize, options: BatchOptions) -> BurnEngine {
    let loaded = load::<CpuBackend>(path, None, context, &Default::default()).unwrap();
    BurnEngine::start(loaded, "tiny".into(), options).unwrap()
}

fn greedy(prompt: String, max_tokens: u32) -> GenerationRequest {
    GenerationRequest::greedy(Prompt::Text(prompt), max_tokens)
}

/// Text and completion, or the error.
fn run(engine: &BurnEngine, req: &GenerationRequest) -> Result<(String, Completion), EngineError> {
    let mut text = String::new();
    let done = engine.generate(req, &mut |piece| {
        text.push_str(piece);
        ControlFlow::Continue(())
    })?;
    Ok((text, done))
}

/// A deterministic pseudo-random source (the test must replay exactly).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A prompt of `words` words drawn from a small vocabulary.
fn words(rng: &mut Lcg, words: usize) -> String {
    const VOCAB: [&str; 12] = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "far", "away", "home"];
    (0..words).map(|_| VOCAB[rng.below(VOCAB.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
}

/// What a request said, and how it ended (`None`: cancelled).
type Outcome = (String, Option<Completion>);

/// Waits for the engine thread to drop what cancelled requests held.
fn wait_for_all_blocks(engine: &BurnEngine) {
    let pool = engine.kv_pool();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.available() != pool.total() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.available(), pool.total(), "blocks still promised after every sequence ended");
}

#[test]
fn a_thousand_sequences_through_a_small_pool_leak_nothing_and_see_only_their_own_cache() {
    const SEQUENCES: usize = 1000;
    let context = 256;
    // Room for 3 full-context sequences while 8 may run: admission waits for
    // blocks, not for batch slots, whenever long sequences are in flight.
    let options = BatchOptions {
        max_batch: 8,
        max_queue: SEQUENCES,
        kv_tokens: Some(3 * context),
        prefill_chunk: 40,
        max_prefixes: 0,
    };
    let engine = engine_at(&tiny_qwen3(), context, options);
    let solo_engine = engine_at(&tiny_qwen3(), context, BatchOptions { max_batch: 1, ..options });
    let mut rng = Lcg(7);
    // (request, cancel after this many pieces)
    let jobs: Vec<(GenerationRequest, Option<usize>)> = (0..SEQUENCES)
        .map(|_| {
            let n = 1 + rng.below(50) as usize;
            let prompt = words(&mut rng, n);
            let req = greedy(prompt, 1 + rng.below(24) as u32);
            let cancel = (rng.below(5) == 0).then(|| rng.below(10) as usize);
            (req, cancel)
        })
        .collect();
    let next = AtomicUsize::new(0);

    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; SEQUENCES]);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((req, cancel)) = jobs.get(i) else { return };
                    let mut text = String::new();
                    let mut pieces = 0;
                    let done = engine.generate(req, &mut |piece| {
                        text.push_str(piece);
                        pieces += 1;
                        if cancel.is_some_and(|c| pieces > c) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                    let done = match done {
                        Ok(c) => Some(c),
                        Err(EngineError::Cancelled { .. }) => None,
                        Err(e) => panic!("request {i}: {e}"),
                    };
                    results.lock().unwrap()[i] = Some((text, done));
                }
            });
        }
    });
    wait_for_all_blocks(&engine);
    let pool = engine.kv_pool();
    assert!(pool.allocated() <= pool.total(), "{} blocks allocated of {}", pool.allocated(), pool.total());

    // Every completed sequence says what it would have said alone; a
    // cancelled one said a prefix of it.
    let results = results.into_inner().unwrap();
    let (mut completed, mut cancelled) = (0, 0);
    for (i, ((req, _), result)) in jobs.iter().zip(results).enumerate() {
        let (text, done) = result.unwrap();
        let (solo, solo_done) = run(&solo_engine, req).unwrap();
        match done {
            Some(done) => {
                completed += 1;
                assert_eq!(text, solo, "sequence {i} batched and alone");
                assert_eq!(done.completion_tokens, solo_done.completion_tokens, "sequence {i}");
                assert_eq!(done.cached_tokens, 0);
            }
            None => {
                cancelled += 1;
                assert!(solo.starts_with(&text), "cancelled sequence {i}: {text:?} is not a prefix of {solo:?}");
            }
        }
    }
    assert!(completed > 700 && cancelled > 100, "{completed} completed, {cancelled} cancelled");
    wait_for_all_blocks(&solo_engine);
}

#[test]
fn a_start_with_a_budget_below_one_context_is_refused() {
    let loaded = load::<CpuBackend>(&tiny_qwen3(), None, 256, &Default::default()).unwrap();
    let options = BatchOptions { kv_tokens: Some(255), ..BatchOptions::default() };
    let err = BurnEngine::start(loaded, "tiny".into(), options).err().unwrap();
    assert_eq!(err, cocoon_engine::StartError::KvBudget { budget: 255, context: 256 });
}

/// The tiny Qwen3 with a 4096-position context, in a fresh directory.
fn tiny_qwen3_long() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cocoon-tiny-qwen3-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(tiny_qwen3()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let config = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["max_position_embeddings"] = 4096.into();
    std::fs::write(&config, c.to_string()).unwrap();
    dir
}

/// A prompt of exactly `n` tokens under the tiny tokenizer.
fn prompt_of(engine_dir: &Path, n: usize) -> String {
    let loaded = load::<CpuBackend>(engine_dir, None, 4096, &Default::default()).unwrap();
    let mut rng = Lcg(11);
    let mut text = words(&mut rng, n);
    while loaded.codec.encode_text(&text).unwrap().len() > n {
        text.pop();
    }
    while loaded.codec.encode_text(&text).unwrap().len() < n {
        text.push('a');
    }
    assert_eq!(loaded.codec.encode_text(&text).unwrap().len(), n);
    text
}

#[test]
fn a_running_stream_keeps_flowing_while_a_long_prompt_is_prefilled_in_chunks() {
    const LONG: usize = 2000;
    const CHUNK: usize = 64;
    let dir = tiny_qwen3_long();
    let long_prompt = prompt_of(&dir, LONG);
    let options = BatchOptions { max_batch: 4, prefill_chunk: CHUNK, ..BatchOptions::default() };
    let engine = engine_at(&dir, 4096, options);

    // The stream: long enough to outlast the prefill (greedy on these weights
    // does not meet the end token within 3,000 tokens; asserted below).
    let stream = greedy("the cat sat on the mat".into(), 3000);
    let times: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    let (long_started, long_done) = std::thread::scope(|s| {
        let streaming = s.spawn(|| {
            engine
                .generate(&stream, &mut |_| {
                    times.lock().unwrap().push(Instant::now());
                    ControlFlow::Continue(())
                })
                .unwrap()
        });
        while times.lock().unwrap().len() < 20 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        let (_, done) = run(&engine, &greedy(long_prompt, 1)).unwrap();
        let long_done = Instant::now();
        assert_eq!(done.prompt_tokens as usize, LONG);
        let streamed = streaming.join().unwrap();
        assert_eq!(streamed.finish_reason, FinishReason::Length, "the stream ended early: {streamed:?}");
        (started, long_done)
    });
    let times = times.into_inner().unwrap();
    let during: Vec<Instant> = times.iter().copied().filter(|t| *t > long_started && *t < long_done).collect();
    // One decoding step follows each chunk, so the stream gets a token per
    // chunk of the long prompt; a piece of text is sent only once it ends a
    // whole character, so fewer pieces arrive than tokens (about 1 in 5 of
    // this model's random byte-level tokens is part of a character).
    let chunks = LONG.div_ceil(CHUNK);
    assert!(during.len() >= chunks / 2, "{} stream tokens while {chunks} chunks were prefilled", during.len());
    // No gap near the whole prefill: each is about one chunk's work.
    let prefill = long_done - long_started;
    let worst = during.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    println!("prefill of {LONG} tokens: {prefill:?} with {} stream tokens, worst gap {worst:?}", during.len());
    assert!(worst < prefill / 4, "worst gap {worst:?} against a {prefill:?} prefill");
}

#[test]
fn prefix_reuse_gives_the_same_tokens_and_stays_with_its_client_key() {
    // Two contexts' worth of blocks: two cached prefixes leave too few for a
    // full-context request, which must evict the oldest.
    let options = BatchOptions { max_batch: 2, max_prefixes: 8, kv_tokens: Some(512), ..BatchOptions::default() };
    let engine = engine_at(&tiny_qwen3(), 256, options);
    let mut rng = Lcg(3);
    let system = words(&mut rng, 60);
    let first = format!("{system} and the cat");
    let second = format!("{system} and a mat far away");
    let keyed = |prompt: &str, key: Option<&str>| GenerationRequest {
        prefix_key: key.map(PrefixKey::from_client_key),
        ..greedy(prompt.into(), 12)
    };

    let (plain, done) = run(&engine, &keyed(&second, None)).unwrap();
    assert_eq!(done.cached_tokens, 0);
    let (_, done) = run(&engine, &keyed(&first, Some("alice"))).unwrap();
    assert_eq!(done.cached_tokens, 0, "nothing cached yet for alice");
    // Another client asking the same is not served from alice's cache.
    let (bob, done) = run(&engine, &keyed(&second, Some("bob"))).unwrap();
    assert_eq!((bob.as_str(), done.cached_tokens), (plain.as_str(), 0));
    // Alice's second request reuses the shared system prompt and says the same.
    let (alice, done) = run(&engine, &keyed(&second, Some("alice"))).unwrap();
    assert_eq!(alice, plain);
    assert!(done.cached_tokens >= 16, "alice reused only {} positions", done.cached_tokens);
    assert!(done.cached_tokens < done.prompt_tokens);
    // The same prompt again: all but its last position come from the cache.
    let (again, done) = run(&engine, &keyed(&second, Some("alice"))).unwrap();
    assert_eq!(again, plain);
    assert_eq!(done.cached_tokens, done.prompt_tokens - 1);

    // Cached prefixes give their blocks up when admission needs them.
    let pool = engine.kv_pool();
    assert!(pool.available() < pool.total(), "the prefix cache holds blocks");
    let (_, done) = run(&engine, &greedy(first.clone(), 250)).unwrap();
    assert!(done.completion_tokens > 0);
    let (_, done) = run(&engine, &keyed(&second, Some("bob"))).unwrap();
    assert_eq!(done.cached_tokens, 0, "bob's prefix, the oldest, was evicted");
    let (_, done) = run(&engine, &keyed(&second, Some("alice"))).unwrap();
    assert_eq!(done.cached_tokens, done.prompt_tokens - 1, "alice's prefix was kept");
}
