//! Continuous batching: one thread owns the model and runs every sequence.
//!
//! Each turn of its loop it admits waiting requests while the batch has room
//! and the key/value pool can promise their blocks (prompt plus completion,
//! so a running sequence never runs out), prefills up to `prefill_chunk`
//! prompt positions, and decodes one token of every running sequence. A long
//! prompt is thus prefilled a chunk per turn while the running streams keep
//! emitting a token per turn. Callers block in [`Engine::generate`] on their
//! own channel; a caller that goes away, or a cancelled request, leaves at the
//! next turn and its blocks go back to the pool.
//!
//! A request that carries a prefix key (the client's own, inside the sealed
//! request) may reuse the keys and values of that key's earlier sequences: a
//! shared system prompt or chat history is not computed again. Reuse never
//! crosses keys, because a cache shared between clients would tell one, by
//! its timing, what another had asked.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use burn::tensor::backend::Backend;

use crate::kv_pool::{KvPool, blocks_for};
use crate::model::{KvCache, Model, logits_rows};
use crate::sampling::{Sampler, StopMatcher, StopScan};
use crate::tokenizer::{StreamDecoder, TextCodec};
use crate::{
    Completion, Engine, EngineError, FinishReason, GenerationRequest, ModelInfo, PrefixKey, Prompt, loader::LoadedModel,
};

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting for a slot or for blocks; past this the engine answers busy.
    pub max_queue: usize,
    /// Key/value memory, in positions of all sequences together; `None`
    /// gives `max_batch` sequences of full context.
    pub kv_tokens: Option<usize>,
    /// Prompt positions prefilled per turn, between decoding steps.
    pub prefill_chunk: usize,
    /// Finished sequences kept for prefix reuse (each holds its blocks until
    /// evicted, oldest first, when admission needs them).
    pub max_prefixes: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: 8, max_queue: 32, kv_tokens: None, prefill_chunk: 64, max_prefixes: 32 }
    }
}

/// Why the engine cannot start with the options it was given.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    #[error("the key/value budget of {budget} positions cannot hold one sequence of the {context}-token context")]
    KvBudget { budget: usize, context: usize },
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

enum Event {
    /// Admitted: this many prompt positions came from the prefix cache.
    Admitted {
        cached_tokens: u32,
    },
    Text {
        text: String,
        completion_tokens: u32,
    },
    Done {
        completion_tokens: u32,
        finish: FinishReason,
    },
    Failed(String),
}

struct Job {
    prompt: Vec<u32>,
    max_tokens: u32,
    sampler: Sampler,
    prefix_key: Option<PrefixKey>,
    events: Sender<Event>,
    cancelled: Arc<AtomicBool>,
}

impl Job {
    /// Cancelled, or its caller gone (a send fails only then).
    fn abandoned(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// A sequence with its cache: prefilling while `cache.len() < prompt.len()`.
struct Sequence<B: Backend> {
    job: Job,
    cache: KvCache<B>,
    /// The tokens the cache holds or is about to (prompt, then fed tokens).
    tokens: Vec<u32>,
    decoder: StreamDecoder,
    generated: u32,
    next: u32,
}

pub struct BurnEngine {
    info: ModelInfo,
    codec: Arc<TextCodec>,
    jobs: Sender<Job>,
    /// Requests sent and not yet admitted (or dropped).
    queued: Arc<AtomicUsize>,
    limit: usize,
    pool: KvPool,
    _worker: JoinHandle<()>,
}

impl BurnEngine {
    pub fn start<B: Backend>(loaded: LoadedModel<B>, id: String, options: BatchOptions) -> Result<Self, StartError> {
        let LoadedModel { mut model, codec, digest } = loaded;
        if options.max_batch == 0 {
            return Err(StartError::Zero("max_batch"));
        }
        if options.prefill_chunk == 0 {
            return Err(StartError::Zero("prefill_chunk"));
        }
        let context = model.max_positions();
        let budget = options.kv_tokens.unwrap_or(options.max_batch * context);
        if budget < context {
            return Err(StartError::KvBudget { budget, context });
        }
        model.set_kv_budget(budget);
        let pool = model.kv_pool().clone();
        let codec = Arc::new(codec);
        let info = ModelInfo { id, digest, context_length: context as u32 };
        let (jobs, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let scheduler = Scheduler {
            model,
            codec: codec.clone(),
            options,
            queued: queued.clone(),
            waiting: VecDeque::new(),
            prefilling: VecDeque::new(),
            running: Vec::new(),
            prefixes: PrefixCache::default(),
        };
        let worker = std::thread::Builder::new()
            .name("cocoon-engine".into())
            .spawn(move || scheduler.run(rx))
            .expect("spawning the engine thread");
        Ok(BurnEngine { info, codec, jobs, queued, limit: options.max_queue, pool, _worker: worker })
    }

    /// The key/value pool (its budget and what is promised now).
    pub fn kv_pool(&self) -> &KvPool {
        &self.pool
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let ids = match prompt {
            Prompt::Chat(messages) => {
                let text = self.codec.render_chat(messages).map_err(EngineError::InvalidRequest)?;
                self.codec.encode_chat(&text)
            }
            Prompt::Text(text) => self.codec.encode_text(text),
        }
        .map_err(EngineError::InvalidRequest)?;
        if ids.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        Ok(ids)
    }
}

impl Engine for BurnEngine {
    fn model(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        emit: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let prompt = self.tokenize(&request.prompt)?;
        let prompt_tokens = prompt.len() as u32;
        let context = self.info.context_length;
        if prompt_tokens >= context {
            return Err(EngineError::ContextLength { prompt: prompt_tokens, limit: context });
        }
        let allowed = request.allowed_tokens(prompt_tokens)?;
        if allowed == 0 {
            return Ok(Completion {
                prompt_tokens,
                completion_tokens: 0,
                cached_tokens: 0,
                finish_reason: FinishReason::Length,
            });
        }
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= self.limit {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Busy { queued, limit: self.limit });
        }
        let (events, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            prompt,
            max_tokens: allowed.min(context - prompt_tokens),
            sampler: Sampler::new(request.sampling.clone()),
            prefix_key: request.prefix_key,
            events,
            cancelled: cancelled.clone(),
        };
        if self.jobs.send(job).is_err() {
            return Err(EngineError::Internal("the engine thread stopped".into()));
        }
        // Dropping the receiver (any return below) also tells the engine to stop.
        let stop_job = || cancelled.store(true, Ordering::Relaxed);
        let mut stops = StopMatcher::new(request.stop.clone());
        let mut cached_tokens = 0;
        let done = |completion_tokens, cached_tokens, finish_reason| Completion {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            finish_reason,
        };
        loop {
            match rx.recv() {
                Ok(Event::Admitted { cached_tokens: c }) => cached_tokens = c,
                Ok(Event::Text { text, completion_tokens }) => match stops.push(&text) {
                    StopScan::Continue(t) => {
                        if !t.is_empty() && emit(&t).is_break() {
                            stop_job();
                            return Err(EngineError::Cancelled { prompt_tokens, completion_tokens });
                        }
                    }
                    StopScan::Stopped(t) => {
                        stop_job();
                        if !t.is_empty() && emit(&t).is_break() {
                            return Err(EngineError::Cancelled { prompt_tokens, completion_tokens });
                        }
                        return Ok(done(completion_tokens, cached_tokens, FinishReason::Stop));
                    }
                },
                Ok(Event::Done { completion_tokens, finish }) => {
                    let rest = stops.flush();
                    if !rest.is_empty() && emit(&rest).is_break() {
                        return Err(EngineError::Cancelled { prompt_tokens, completion_tokens });
                    }
                    return Ok(done(completion_tokens, cached_tokens, finish));
                }
                Ok(Event::Failed(e)) => return Err(EngineError::Internal(e)),
                Err(_) => return Err(EngineError::Internal("the engine thread stopped".into())),
            }
        }
    }
}

/// Finished sequences whose keys and values may serve a later request with
/// the same prefix key, least recently used first.
struct PrefixCache<B: Backend> {
    entries: VecDeque<Prefix<B>>,
}

impl<B: Backend> Default for PrefixCache<B> {
    fn default() -> Self {
        PrefixCache { entries: VecDeque::new() }
    }
}

struct Prefix<B: Backend> {
    key: PrefixKey,
    tokens: Vec<u32>,
    cache: KvCache<B>,
}

/// Shorter common prefixes are recomputed rather than reused: the saving would
/// not pay for discarding an entry that a longer match might want.
const MIN_REUSE: usize = crate::kv_pool::BLOCK_TOKENS;

impl<B: Backend> PrefixCache<B> {
    /// Takes the cache of `key`'s entry sharing the longest prefix with
    /// `prompt`, cut to that prefix (leaving at least one prompt token to feed).
    fn take(&mut self, key: &PrefixKey, prompt: &[u32]) -> Option<KvCache<B>> {
        let common = |p: &Prefix<B>| p.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let (i, n) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, p)| p.key == *key)
            .map(|(i, p)| (i, common(p).min(prompt.len() - 1)))
            .max_by_key(|&(_, n)| n)?;
        if n < MIN_REUSE {
            return None;
        }
        let mut cache = self.entries.remove(i)?.cache;
        cache.truncate(n);
        Some(cache)
    }

    /// Keeps a finished sequence; entries it extends (the same key, a prefix
    /// of its tokens) are dropped, and the oldest past `max`.
    fn insert(&mut self, key: PrefixKey, tokens: Vec<u32>, mut cache: KvCache<B>, max: usize) {
        if max == 0 || cache.len() < MIN_REUSE {
            return;
        }
        cache.release_unused();
        self.entries.retain(|p| !(p.key == key && tokens.starts_with(&p.tokens)));
        while self.entries.len() >= max {
            self.entries.pop_front();
        }
        self.entries.push_back(Prefix { key, tokens, cache });
    }

    /// Drops the least recently used entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        self.entries.pop_front().is_some()
    }
}

struct Scheduler<B: Backend> {
    model: Model<B>,
    codec: Arc<TextCodec>,
    options: BatchOptions,
    queued: Arc<AtomicUsize>,
    /// Accepted, not yet given blocks.
    waiting: VecDeque<Job>,
    /// Given blocks, prompt not fully fed yet.
    prefilling: VecDeque<Sequence<B>>,
    running: Vec<Sequence<B>>,
    prefixes: PrefixCache<B>,
}

impl<B: Backend> Scheduler<B> {
    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.prefilling.is_empty() && self.running.is_empty()
    }

    fn run(mut self, jobs: Receiver<Job>) {
        loop {
            if self.idle() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.try_recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.idle() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.drop_abandoned();
            self.admit();
            self.prefill_chunk();
            self.decode_step();
        }
    }

    /// Requests cancelled or whose callers left, wherever they are; their
    /// blocks go back with their caches.
    fn drop_abandoned(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|j| !j.abandoned());
        self.queued.fetch_sub(before - self.waiting.len(), Ordering::Relaxed);
        self.prefilling.retain(|s| !s.job.abandoned());
    }

    /// Moves waiting requests, oldest first, into prefilling while the batch
    /// has room and the pool can promise their blocks (evicting cached
    /// prefixes if it must).
    fn admit(&mut self) {
        while self.running.len() + self.prefilling.len() < self.options.max_batch {
            let Some(job) = self.waiting.pop_front() else { return };
            let need = blocks_for(job.prompt.len() + job.max_tokens as usize);
            let mut cache = match &job.prefix_key {
                Some(key) => self.prefixes.take(key, &job.prompt),
                None => None,
            }
            .unwrap_or_else(|| self.model.new_cache());
            let more = need.saturating_sub(cache.table().promised());
            while !cache.promise(more) {
                if !self.prefixes.evict_oldest() {
                    // Waits for running sequences to finish; order is kept.
                    self.waiting.push_front(job);
                    return;
                }
            }
            self.queued.fetch_sub(1, Ordering::Relaxed);
            let cached_tokens = cache.len() as u32;
            let _ = job.events.send(Event::Admitted { cached_tokens });
            let tokens = job.prompt.clone();
            self.prefilling.push_back(Sequence {
                job,
                cache,
                tokens,
                decoder: StreamDecoder::default(),
                generated: 0,
                next: 0,
            });
        }
    }

    /// Feeds up to `prefill_chunk` prompt positions, oldest sequence first; a
    /// sequence whose prompt is complete samples its first token and runs.
    fn prefill_chunk(&mut self) {
        let mut budget = self.options.prefill_chunk;
        while budget > 0 {
            let Some(mut seq) = self.prefilling.pop_front() else { return };
            let fed = seq.cache.len();
            let n = (seq.job.prompt.len() - fed).min(budget);
            budget -= n;
            let last = fed + n == seq.job.prompt.len();
            let chunk = &seq.job.prompt[fed..fed + n];
            let model = &self.model;
            let cache = &mut seq.cache;
            let result = catch_unwind(AssertUnwindSafe(|| {
                if last {
                    logits_rows(model.prefill(chunk, cache, false)).map(Some)
                } else {
                    model.extend(chunk, cache);
                    Ok(None)
                }
            }));
            match result {
                Ok(Ok(Some(rows))) => {
                    let max_positions = self.model.max_positions();
                    if advance(&self.codec, &mut seq, &rows[0], max_positions) {
                        self.running.push(seq);
                    } else {
                        self.finish(seq);
                    }
                }
                Ok(Ok(None)) => self.prefilling.push_front(seq),
                Ok(Err(e)) => {
                    let _ = seq.job.events.send(Event::Failed(e));
                }
                Err(_) => {
                    let _ = seq.job.events.send(Event::Failed("the decoder panicked during prefill".into()));
                }
            }
        }
    }

    /// One token for every running sequence.
    fn decode_step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let tokens: Vec<u32> = self.running.iter().map(|r| r.next).collect();
        let model = &self.model;
        let running = &mut self.running;
        let step = catch_unwind(AssertUnwindSafe(|| {
            let mut caches: Vec<&mut KvCache<B>> = running.iter_mut().map(|r| &mut r.cache).collect();
            logits_rows(model.decode(&tokens, &mut caches))
        }));
        let rows = match step {
            Ok(Ok(rows)) => rows,
            failure => {
                let why = match failure {
                    Ok(Err(e)) => e,
                    _ => "the decoder panicked".to_string(),
                };
                tracing::error!(error = %why, "decoding step failed; ending the batch");
                for r in self.running.drain(..) {
                    let _ = r.job.events.send(Event::Failed(why.clone()));
                }
                return;
            }
        };
        let max_positions = self.model.max_positions();
        for (mut seq, row) in std::mem::take(&mut self.running).into_iter().zip(&rows) {
            if advance(&self.codec, &mut seq, row, max_positions) {
                self.running.push(seq);
            } else {
                self.finish(seq);
            }
        }
    }

    /// A sequence that ended: its cache kept for its prefix key, or dropped.
    fn finish(&mut self, seq: Sequence<B>) {
        if let Some(key) = seq.job.prefix_key
            && !seq.job.abandoned()
        {
            self.prefixes.insert(key, seq.tokens, seq.cache, self.options.max_prefixes);
        }
    }
}

/// Samples the next token of one sequence and sends its text; false when it is finished.
fn advance<B: Backend>(codec: &TextCodec, r: &mut Sequence<B>, logits: &[f32], max_positions: usize) -> bool {
    if r.job.abandoned() {
        return false;
    }
    let token = r.job.sampler.sample(logits);
    let finish = |r: &Sequence<B>, finish| {
        let _ = r.job.events.send(Event::Done { completion_tokens: r.generated, finish });
        false
    };
    if codec.is_stop(token) {
        return finish(r, FinishReason::Stop);
    }
    r.generated += 1;
    let text = match r.decoder.push(codec, token) {
        Ok(t) => t,
        Err(e) => {
            let _ = r.job.events.send(Event::Failed(e));
            return false;
        }
    };
    if r.job.events.send(Event::Text { text, completion_tokens: r.generated }).is_err() {
        return false;
    }
    if r.generated >= r.job.max_tokens || r.cache.len() + 1 >= max_positions {
        return finish(r, FinishReason::Length);
    }
    r.next = token;
    r.tokens.push(token);
    true
}
