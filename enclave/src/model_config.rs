//! The model section of the static config, and loading the engine it names.
//!
//! ```toml
//! [model]
//! id = "smollm2-135m-instruct"             # the name clients ask for
//! path = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"   # GGUF file or Hugging Face directory
//! digest = "sha256:b179c952..."            # refused at start when the files differ
//! context_length = 2048                    # optional; default min(model's, 4096)
//! device = "cpu"                           # or "cuda" (builds with the `cuda` feature)
//! max_batch = 8                            # sequences decoded together
//! max_queue = 32                           # waiting requests before "busy"
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;

use cocoon_engine::{BatchOptions, BurnEngine, Engine};

const DEFAULT_CONTEXT: usize = 4096;
/// Upper bounds on what a config may ask for.
const MAX_CONTEXT: usize = 1 << 20;
const MAX_BATCH: usize = 256;
const MAX_QUEUE: usize = 4096;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub model: Option<ModelSection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub id: Option<String>,
    pub path: Option<PathBuf>,
    pub digest: Option<String>,
    pub context_length: Option<usize>,
    pub device: Option<String>,
    pub max_batch: Option<usize>,
    pub max_queue: Option<usize>,
}

impl StaticConfig {
    /// Parses the config file's bytes; an empty file is an empty config.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(bytes).context("the static config is not UTF-8")?;
        toml::from_str(text).context("parsing the static config (TOML)")
    }
}

/// `sha256:<64 hex>` (or bare hex) to bytes.
pub fn parse_digest(s: &str) -> anyhow::Result<[u8; 32]> {
    let h = s.strip_prefix("sha256:").unwrap_or(s);
    let bytes = hex::decode(h).with_context(|| format!("model digest {s:?} is not hex"))?;
    bytes.try_into().map_err(|b: Vec<u8>| anyhow::anyhow!("model digest has {} bytes; expected 32 (SHA-256)", b.len()))
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
    let batch = BatchOptions { max_batch: m.max_batch.unwrap_or(8), max_queue: m.max_queue.unwrap_or(32) };
    if batch.max_batch == 0 || batch.max_batch > MAX_BATCH || batch.max_queue > MAX_QUEUE {
        bail!("max_batch must be 1..={MAX_BATCH} and max_queue 0..={MAX_QUEUE}");
    }
    let id = match &m.id {
        Some(id) => id.clone(),
        None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
    };
    let device = m.device.as_deref().unwrap_or("cpu");
    let started = std::time::Instant::now();
    tracing::info!(path = %path.display(), device, "loading model");
    let engine: Arc<dyn Engine> = match device {
        "cpu" => {
            let loaded =
                cocoon_engine::load::<cocoon_engine::CpuBackend>(path, expected, context, &Default::default())?;
            Arc::new(BurnEngine::start(loaded, id, batch))
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            let loaded =
                cocoon_engine::load::<cocoon_engine::CudaBackend>(path, expected, context, &Default::default())?;
            Arc::new(BurnEngine::start(loaded, id, batch))
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
