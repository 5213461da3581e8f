//! Continuous batching: one thread owns the model and decodes every running
//! sequence in one batch per step; requests join (after their prefill) and leave
//! between steps. Callers block in [`Engine::generate`] on their own channel.

use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use burn::tensor::backend::Backend;

use crate::model::{KvCache, Model, logits_rows};
use crate::sampling::{Sampler, StopMatcher, StopScan};
use crate::tokenizer::{StreamDecoder, TextCodec};
use crate::{Completion, Engine, EngineError, FinishReason, GenerationRequest, ModelInfo, Prompt, loader::LoadedModel};

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting for a slot; past this the engine answers busy.
    pub max_queue: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: 8, max_queue: 32 }
    }
}

enum Event {
    Text { text: String, completion_tokens: u32 },
    Done { completion_tokens: u32, finish: FinishReason },
    Failed(String),
}

struct Job {
    prompt: Vec<u32>,
    max_tokens: u32,
    sampler: Sampler,
    events: Sender<Event>,
    cancelled: Arc<AtomicBool>,
}

struct Running<B: Backend> {
    job: Job,
    cache: KvCache<B>,
    decoder: StreamDecoder,
    generated: u32,
    next: u32,
}

pub struct BurnEngine {
    info: ModelInfo,
    codec: Arc<TextCodec>,
    queue: SyncSender<Job>,
    limit: usize,
    _worker: JoinHandle<()>,
}

impl BurnEngine {
    pub fn start<B: Backend>(loaded: LoadedModel<B>, id: String, options: BatchOptions) -> Self {
        let LoadedModel { model, codec, digest } = loaded;
        let codec = Arc::new(codec);
        let info = ModelInfo { id, digest, context_length: model.max_positions() as u32 };
        let (queue, jobs) = mpsc::sync_channel(options.max_queue);
        let worker_codec = codec.clone();
        let max_batch = options.max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("cocoon-engine".into())
            .spawn(move || run(model, &worker_codec, jobs, max_batch))
            .expect("spawning the engine thread");
        BurnEngine { info, codec, queue, limit: options.max_queue, _worker: worker }
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
            return Ok(Completion { prompt_tokens, completion_tokens: 0, finish_reason: FinishReason::Length });
        }
        let (events, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            prompt,
            max_tokens: allowed.min(context - prompt_tokens),
            sampler: Sampler::new(request.sampling.clone()),
            events,
            cancelled: cancelled.clone(),
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(EngineError::Busy { queued: self.limit, limit: self.limit }),
            Err(TrySendError::Disconnected(_)) => {
                return Err(EngineError::Internal("the engine thread stopped".into()));
            }
        }
        // Dropping the receiver (any return below) also tells the engine to stop.
        let stop_job = || cancelled.store(true, Ordering::Relaxed);
        let mut stops = StopMatcher::new(request.stop.clone());
        let done = |completion_tokens, finish_reason| Completion { prompt_tokens, completion_tokens, finish_reason };
        loop {
            match rx.recv() {
                Ok(Event::Text { text, completion_tokens }) => match stops.push(&text) {
                    StopScan::Continue(t) => {
                        if !t.is_empty() && emit(&t).is_break() {
                            stop_job();
                            return Err(EngineError::Cancelled);
                        }
                    }
                    StopScan::Stopped(t) => {
                        stop_job();
                        if !t.is_empty() && emit(&t).is_break() {
                            return Err(EngineError::Cancelled);
                        }
                        return Ok(done(completion_tokens, FinishReason::Stop));
                    }
                },
                Ok(Event::Done { completion_tokens, finish }) => {
                    let rest = stops.flush();
                    if !rest.is_empty() && emit(&rest).is_break() {
                        return Err(EngineError::Cancelled);
                    }
                    return Ok(done(completion_tokens, finish));
                }
                Ok(Event::Failed(e)) => return Err(EngineError::Internal(e)),
                Err(_) => return Err(EngineError::Internal("the engine thread stopped".into())),
            }
        }
    }
}

/// The engine thread: admit, prefill, then decode all running sequences a step at a time.
fn run<B: Backend>(model: Model<B>, codec: &TextCodec, jobs: Receiver<Job>, max_batch: usize) {
    let mut running: Vec<Running<B>> = Vec::new();
    loop {
        if running.is_empty() {
            match jobs.recv() {
                Ok(job) => admit(&model, codec, job, &mut running),
                Err(_) => return,
            }
        }
        while running.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => admit(&model, codec, job, &mut running),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if running.is_empty() => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if running.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = running.iter().map(|r| r.next).collect();
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
                for r in running.drain(..) {
                    let _ = r.job.events.send(Event::Failed(why.clone()));
                }
                continue;
            }
        };
        let mut i = 0;
        running.retain_mut(|r| {
            let keep = advance(codec, r, &rows[i], model.max_positions());
            i += 1;
            keep
        });
    }
}

/// Prefills a new request and, unless it ends at once, adds it to the batch.
fn admit<B: Backend>(model: &Model<B>, codec: &TextCodec, job: Job, running: &mut Vec<Running<B>>) {
    if job.cancelled.load(Ordering::Relaxed) {
        return;
    }
    let mut cache = model.new_cache();
    let prefill = catch_unwind(AssertUnwindSafe(|| logits_rows(model.prefill(&job.prompt, &mut cache, false))));
    let rows = match prefill {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            let _ = job.events.send(Event::Failed(e));
            return;
        }
        Err(_) => {
            let _ = job.events.send(Event::Failed("the decoder panicked during prefill".into()));
            return;
        }
    };
    let mut r = Running { job, cache, decoder: StreamDecoder::default(), generated: 0, next: 0 };
    if advance(codec, &mut r, &rows[0], model.max_positions()) {
        running.push(r);
    }
}

/// Samples the next token of one sequence and sends its text; false when it is finished.
fn advance<B: Backend>(codec: &TextCodec, r: &mut Running<B>, logits: &[f32], max_positions: usize) -> bool {
    if r.job.cancelled.load(Ordering::Relaxed) {
        return false;
    }
    let token = r.job.sampler.sample(logits);
    let finish = |r: &Running<B>, finish| {
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
    true
}
