//! The interface between the enclave's OpenAI-compatible API and a model.
//!
//! Generation is blocking and callback-driven: the engine calls `emit` with
//! each piece of text as it is decoded, and stops early when `emit` asks it to
//! (the client went away). The enclave runs it off the async runtime.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

pub use cocoon_protocol::price::{BudgetError, CostCap};

pub mod asr;
#[allow(unsafe_code)] // AVX2 kernels
pub mod attention;
pub mod config;
mod cpu;
pub mod gguf;
#[allow(unsafe_code)] // AVX2 kernels
pub mod host_ops;
pub mod kv_pool;
pub mod loader;
pub mod model;
#[allow(unsafe_code)] // AVX2 and AVX-512 kernels, gemm, disjoint writes from rayon tasks
pub mod quant;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;
pub mod weights;

pub use burn::tensor::FloatDType;
pub use loader::{LoadedModel, default_model_path, load, load_with, load_with_dtype, model_digest};
pub use model::WeightLayout;
pub use scheduler::{BatchOptions, BurnEngine, StartError};

/// The CPU backend: Flex (gemm-based, multi-threaded) unless only `ndarray` is enabled.
#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type CpuBackend = burn::backend::NdArray<f32>;

/// NVIDIA GPUs through CUDA (the driver library is loaded at run time), with
/// bf16 as the float type: weights, activations and keys/values take half
/// the memory and bandwidth of f32, as the checkpoints of the models GPU
/// owners serve are stored; norms are computed in f32 (`model::ops::rms_norm`).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<burn::tensor::bf16, i32>;

/// Whether `B` is this build's CPU backend.
pub(crate) fn is_cpu_backend<B: burn::tensor::backend::Backend>() -> bool {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<CpuBackend>() {
        return true;
    }
    false
}

/// Why a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("reading the model: {0}")]
    Io(String),
    #[error("model file: {0}")]
    Format(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the model's digest is sha256:{found}; the config expects sha256:{expected}")]
    DigestMismatch { expected: String, found: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Formatted with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Used verbatim.
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_p: 1.0, top_k: None, seed: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// The request's maximum cost at the worker's prices: generation stops
    /// (finish reason `length`) before the completion would exceed it.
    pub cost_cap: Option<CostCap>,
    /// Lets this request reuse the keys and values of earlier requests with
    /// the same key (see [`PrefixKey`]); `None` never reuses.
    pub prefix_key: Option<PrefixKey>,
}

/// A client's prefix-cache key: SHA-256 of the key the client put in its
/// sealed request, so the cache never holds the client's own string. Only
/// requests with equal keys share cached prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixKey(pub [u8; 32]);

impl PrefixKey {
    pub fn from_client_key(key: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"cocoon prefix cache key\0");
        h.update(key.as_bytes());
        PrefixKey(h.finalize().into())
    }
}

impl GenerationRequest {
    /// Greedy decoding of `prompt` for at most `max_tokens`, with no stop
    /// string, cost cap or prefix key (tests and benchmarks start from it).
    pub fn greedy(prompt: Prompt, max_tokens: u32) -> Self {
        GenerationRequest {
            prompt,
            max_tokens,
            sampling: Sampling { temperature: 0.0, ..Sampling::default() },
            stop: vec![],
            cost_cap: None,
            prefix_key: None,
        }
    }

    /// The completion tokens allowed for a prompt of `prompt_tokens`.
    pub fn allowed_tokens(&self, prompt_tokens: u32) -> Result<u32, EngineError> {
        match &self.cost_cap {
            None => Ok(self.max_tokens),
            Some(cap) => Ok(self.max_tokens.min(cap.max_completion_tokens(prompt_tokens)?)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: u32,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients ask for (`model` in requests).
    pub id: String,
    /// SHA-256 over the model files in their defined order.
    pub digest: [u8; 32],
    /// Longest prompt plus completion, in tokens.
    pub context_length: u32,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the engine is busy: {queued} requests are queued (limit {limit}); retry later")]
    Busy { queued: usize, limit: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the prompt has {prompt} tokens; this model's context is {limit}")]
    ContextLength { prompt: u32, limit: u32 },
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// The caller stopped the generation (its client went away); what was
    /// generated until then, so that it can still be metered.
    #[error("generation was cancelled after {completion_tokens} tokens")]
    Cancelled { prompt_tokens: u32, completion_tokens: u32 },
    #[error("engine failure: {0}")]
    Internal(String),
}

pub trait Engine: Send + Sync + 'static {
    fn model(&self) -> &ModelInfo;

    /// Generates a completion, calling `emit` with each new piece of text.
    fn generate(
        &self,
        request: &GenerationRequest,
        emit: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError>;
}
