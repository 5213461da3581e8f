//! The model section of the static config, and loading the engine it names.
//!
//! ```toml
//! [model]
//! id = "smollm2-135m-instruct"             # the name clients ask for
//! path = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"   # GGUF file or Hugging Face directory
//! digest = "sha256:b179c952..."            # refused at start when the files differ
//! context_length = 2048                    # optional; default min(model's, 4096)
//! device = "cpu"                           # or "cuda" (builds with the `cuda` feature)
//! dtype = "bf16"                           # cuda only: bf16 (default) or f16, see below
//! max_batch = 8                            # sequences decoded together
//! max_queue = 32                           # waiting requests before "busy"
//! kv_cache_tokens = 32768                  # optional; KV memory in positions, default context × max_batch
//! prefill_chunk = 64                       # optional; prompt tokens per scheduler step
//! prefix_cache_entries = 32                # optional; kept prompt prefixes (0 turns reuse off)
//!
//! [pricing]                                # optional: a worker without it charges nothing
//! prompt_per_1k = 1000                     # nanoTON per 1,000 prompt tokens
//! completion_per_1k = 4000                 # nanoTON per 1,000 completion tokens
//! payout_address = "UQ..."                 # the TON address the worker is paid at
//! ```
//!
//! On a GPU the weights, activations and keys/values are bf16 by default
//! (the checkpoints' own type, f32's range); `dtype = "f16"` keeps a
//! quantised GGUF file's values three bits more closely (SmolLM2 Q4_1: logits
//! within 0.07 of f32 instead of 1.1; `engine/tests/bf16.rs`) where the
//! model's activations fit f16's range. The CPU computes in f32 on packed
//! weights and takes no `dtype`.
//!
//! Prices, payout address and capacity go into the attested claims: a proxy
//! or client reads them from verified evidence, never from the host.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;

use cocoon_engine::{BatchOptions, BurnEngine, Engine, FloatDType};
use cocoon_protocol::{Capacity, NanoTon, Prices};

const DEFAULT_CONTEXT: usize = 4096;
const DEFAULT_BATCH: usize = 8;
const DEFAULT_QUEUE: usize = 32;
/// Longest payout address accepted (a TON address is 48 characters in base64).
const MAX_ADDRESS: usize = 128;
/// Upper bounds on what a config may ask for.
const MAX_CONTEXT: usize = 1 << 20;
const MAX_BATCH: usize = 256;
const MAX_QUEUE: usize = 4096;
const MAX_PREFILL_CHUNK: usize = 8192;
const MAX_PREFIX_ENTRIES: usize = 4096;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub model: Option<ModelSection>,
    pub pricing: Option<PricingSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    pub prompt_per_1k: NanoTon,
    pub completion_per_1k: NanoTon,
    pub payout_address: Option<String>,
}

/// What the claims say about the worker's business: prices, payout, capacity.
#[derive(Debug, Clone, Default)]
pub struct WorkerTerms {
    pub prices: Option<Prices>,
    pub payout_address: Option<String>,
    pub capacity: Option<Capacity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub id: Option<String>,
    pub path: Option<PathBuf>,
    pub digest: Option<String>,
    pub context_length: Option<usize>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub max_batch: Option<usize>,
    pub max_queue: Option<usize>,
    pub kv_cache_tokens: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub prefix_cache_entries: Option<usize>,
}

impl StaticConfig {
    /// Parses the config file's bytes; an empty file is an empty config.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(bytes).context("the static config is not UTF-8")?;
        let config: StaticConfig = toml::from_str(text).context("parsing the static config (TOML)")?;
        if let Some(a) = config.pricing.as_ref().and_then(|p| p.payout_address.as_deref())
            && (a.is_empty() || a.len() > MAX_ADDRESS || !a.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!("pricing.payout_address must be 1 to {MAX_ADDRESS} printable ASCII characters, found {a:?}");
        }
        Ok(config)
    }

    /// The terms the claims attest; capacity only when a model is served.
    pub fn terms(&self, serves_model: bool) -> WorkerTerms {
        let m = self.model.clone().unwrap_or_default();
        WorkerTerms {
            prices: self
                .pricing
                .as_ref()
                .map(|p| Prices { prompt_per_1k: p.prompt_per_1k, completion_per_1k: p.completion_per_1k }),
            payout_address: self.pricing.as_ref().and_then(|p| p.payout_address.clone()),
            capacity: serves_model.then(|| Capacity {
                max_batch: m.max_batch.unwrap_or(DEFAULT_BATCH) as u32,
                max_queue: m.max_queue.unwrap_or(DEFAULT_QUEUE) as u32,
            }),
        }
    }
}

/// `sha256:<64 hex>` (or bare hex) to bytes.
pub fn parse_digest(s: &str) -> anyhow::Result<[u8; 32]> {
    let h = s.strip_prefix("sha256:").unwrap_or(s);
    let bytes = hex::decode(h).with_context(|| format!("model digest {s:?} is not hex"))?;
    bytes.try_into().map_err(|b: Vec<u8>| anyhow::anyhow!("model digest has {} bytes; expected 32 (SHA-256)", b.len()))
}

/// The float type `dtype` asks of `device`: none on the CPU, which computes
/// in f32 (on packed weights); bf16 unless it says f16 on CUDA.
fn float_type(device: &str, dtype: Option<&str>) -> anyhow::Result<Option<FloatDType>> {
    match (device, dtype) {
        ("cuda", None | Some("bf16")) => Ok(Some(FloatDType::BF16)),
        ("cuda", Some("f16")) => Ok(Some(FloatDType::F16)),
        ("cuda", Some(other)) => bail!("dtype {other:?} is unknown; expected \"bf16\" or \"f16\""),
        (_, None) => Ok(None),
        (device, Some(d)) => bail!("dtype {d:?} applies to device \"cuda\" only; device {device:?} computes in f32"),
    }
}

/// Loads the model the section names and starts its engine.
pub fn start_engine(m: &ModelSection) -> anyhow::Result<Arc<dyn Engine>> {
    let Some(path) = &m.path else { bail!("the model section has no path") };
    let expected = m.digest.as_deref().map(parse_digest).transpose()?;
    if expected.is_none() {
        tracing::warn!("no model digest configured: the model is served unchecked (its digest is still attested)");
    }
    let context = m.context_length.unwrap_or(DEFAULT_CONTEXT);
    if context == 0 || context > MAX_CONTEXT {
        bail!("context_length {context} is outside 1..={MAX_CONTEXT}");
    }
    let defaults = BatchOptions::default();
    let batch = BatchOptions {
        max_batch: m.max_batch.unwrap_or(DEFAULT_BATCH),
        max_queue: m.max_queue.unwrap_or(DEFAULT_QUEUE),
        kv_tokens: m.kv_cache_tokens,
        prefill_chunk: m.prefill_chunk.unwrap_or(defaults.prefill_chunk),
        max_prefixes: m.prefix_cache_entries.unwrap_or(defaults.max_prefixes),
    };
    if batch.max_batch == 0 || batch.max_batch > MAX_BATCH || batch.max_queue > MAX_QUEUE {
        bail!("max_batch must be 1..={MAX_BATCH} and max_queue 0..={MAX_QUEUE}");
    }
    if batch.prefill_chunk == 0 || batch.prefill_chunk > MAX_PREFILL_CHUNK {
        bail!("prefill_chunk must be 1..={MAX_PREFILL_CHUNK}, found {}", batch.prefill_chunk);
    }
    if batch.max_prefixes > MAX_PREFIX_ENTRIES {
        bail!("prefix_cache_entries must be 0..={MAX_PREFIX_ENTRIES}, found {}", batch.max_prefixes);
    }
    if batch.kv_tokens.is_some_and(|t| t > MAX_CONTEXT * MAX_BATCH) {
        bail!("kv_cache_tokens must be at most {}", MAX_CONTEXT * MAX_BATCH);
    }
    let id = match &m.id {
        Some(id) => id.clone(),
        None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
    };
    let device = m.device.as_deref().unwrap_or("cpu");
    let dtype = float_type(device, m.dtype.as_deref())?;
    let started = std::time::Instant::now();
    tracing::info!(path = %path.display(), device, ?dtype, "loading model");
    let engine: Arc<dyn Engine> = match device {
        "cpu" => {
            let loaded =
                cocoon_engine::load::<cocoon_engine::CpuBackend>(path, expected, context, &Default::default())?;
            Arc::new(BurnEngine::start(loaded, id, batch)?)
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            use cocoon_engine::{CudaBackend, loader::default_layout};
            let layout = default_layout::<CudaBackend>();
            let loaded = cocoon_engine::load_with_dtype::<CudaBackend>(
                path,
                expected,
                context,
                &Default::default(),
                layout,
                dtype.context("device cuda without a float type")?,
            )?;
            Arc::new(BurnEngine::start(loaded, id, batch)?)
        }
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!("device \"cuda\": this enclave was built without the `cuda` feature"),
        other => bail!("device {other:?} is unknown; expected cpu or cuda"),
    };
    let info = engine.model();
    tracing::info!(
        model = %info.id,
        digest = %format!("sha256:{}", hex::encode(info.digest)),
        context = info.context_length,
        seconds = started.elapsed().as_secs_f32(),
        "model loaded"
    );
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_computes_in_bf16_unless_told_f16_and_the_cpu_takes_no_float_type() {
        assert_eq!(float_type("cuda", None).unwrap(), Some(FloatDType::BF16));
        assert_eq!(float_type("cuda", Some("bf16")).unwrap(), Some(FloatDType::BF16));
        assert_eq!(float_type("cuda", Some("f16")).unwrap(), Some(FloatDType::F16));
        assert_eq!(float_type("cpu", None).unwrap(), None);
        let err = float_type("cuda", Some("fp8")).unwrap_err().to_string();
        assert!(err.contains("\"fp8\" is unknown"), "{err}");
        let err = float_type("cpu", Some("f16")).unwrap_err().to_string();
        assert!(err.contains("cuda\" only"), "{err}");
    }

    #[test]
    fn the_float_type_is_read_from_the_model_section() {
        let config = StaticConfig::parse(b"[model]\npath = \"/m.gguf\"\ndevice = \"cuda\"\ndtype = \"f16\"\n").unwrap();
        assert_eq!(config.model.unwrap().dtype.as_deref(), Some("f16"));
    }
}
