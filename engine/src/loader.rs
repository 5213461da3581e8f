//! Finding, hashing and loading a model from a GGUF file or a Hugging Face directory.
//!
//! The model digest is computed over exactly the bytes the weights and tokenizer
//! are then read from (the same memory maps), before anything is parsed, so a
//! model that does not match the expected digest is refused before its contents
//! are trusted.
//!
//! Digest definition (what verifiers recompute):
//! - a GGUF file: SHA-256 of the file (the same as `sha256sum model.gguf`);
//! - a Hugging Face directory: SHA-256 over, for each file in the order
//!   `config.json`, `generation_config.json` (when present), `tokenizer.json`,
//!   `tokenizer_config.json`, then every `*.safetensors` by byte-wise name
//!   order: the file name in UTF-8, one zero byte, the length as a big-endian
//!   u64, and the contents.

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::FloatDType;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::LoadError;
use crate::config::ModelConfig;
use crate::gguf::Gguf;
use crate::model::{Model, WeightLayout};
use crate::tokenizer::TextCodec;
use crate::weights::{GgufWeights, SafetensorsWeights};

/// Largest JSON side file (tokenizer.json of a 256k vocabulary is about 20 MB).
const MAX_JSON: u64 = 64 << 20;
/// Largest number of safetensors shards.
const MAX_SHARDS: usize = 1024;

/// A model file or directory, memory-mapped, in digest order.
pub struct ModelFiles {
    pub kind: ModelKind,
    files: Vec<(String, Mmap)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Gguf,
    HuggingFace,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LoadError + '_ {
    move |e| LoadError::Io(format!("{}: {e}", path.display()))
}

fn map(path: &Path) -> Result<Mmap, LoadError> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only and private to this process. Model files are
    // not modified while a worker runs; if one were, the digest check would no
    // longer describe what is served, which is why the digest is computed over
    // the mapped bytes that are then parsed, not over a separate read.
    unsafe { Mmap::map(&file) }.map_err(io_err(path))
}

impl ModelFiles {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(ModelFiles { kind: ModelKind::Gguf, files: vec![(name, map(path)?)] });
        }
        let mut names = vec!["config.json".to_string()];
        if path.join("generation_config.json").is_file() {
            names.push("generation_config.json".into());
        }
        names.extend(["tokenizer.json".to_string(), "tokenizer_config.json".to_string()]);
        let mut shards: Vec<String> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        if shards.is_empty() {
            return Err(LoadError::Io(format!("{}: no *.safetensors files", path.display())));
        }
        if shards.len() > MAX_SHARDS {
            return Err(LoadError::Io(format!("{} safetensors shards; the limit is {MAX_SHARDS}", shards.len())));
        }
        shards.sort();
        let mut files = Vec::new();
        for name in names.iter().chain(&shards) {
            let p = path.join(name);
            let m = map(&p)?;
            if name.ends_with(".json") && m.len() as u64 > MAX_JSON {
                return Err(LoadError::Io(format!("{} is {} bytes; the limit is {MAX_JSON}", p.display(), m.len())));
            }
            files.push((name.clone(), m));
        }
        Ok(ModelFiles { kind: ModelKind::HuggingFace, files })
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, m)| &m[..])
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// The model digest (see the module documentation), with progress.
    pub fn digest(&self, progress: &ProgressBar) -> [u8; 32] {
        let mut h = Sha256::new();
        for (name, bytes) in &self.files {
            if self.kind == ModelKind::HuggingFace {
                h.update(name.as_bytes());
                h.update([0]);
                h.update((bytes.len() as u64).to_be_bytes());
            }
            for chunk in bytes.chunks(8 << 20) {
                h.update(chunk);
                progress.inc(chunk.len() as u64);
            }
        }
        h.finalize().into()
    }
}

/// What loading produces: the decoder, its tokenizer and the digest of the files.
pub struct LoadedModel<B: Backend> {
    pub model: Model<B>,
    pub codec: TextCodec,
    pub digest: [u8; 32],
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Quantised weights stay packed on the CPU backend, multiplied as integers
/// with 16-bit activations while decoding; other backends get them widened.
pub fn default_layout<B: Backend>() -> WeightLayout {
    if is_cpu_backend::<B>() { WeightLayout::PackedInt16 } else { WeightLayout::Dense }
}

/// Whether `B` is this build's CPU backend.
pub(crate) fn is_cpu_backend<B: Backend>() -> bool {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::CpuBackend>() {
        return true;
    }
    false
}

/// Loads a model; refuses it when `expected_digest` is given and differs.
/// `max_positions` bounds the context (and the rotary tables' memory).
pub fn load<B: Backend>(
    path: &Path,
    expected_digest: Option<[u8; 32]>,
    max_positions: usize,
    device: &B::Device,
) -> Result<LoadedModel<B>, LoadError> {
    load_with(path, expected_digest, max_positions, device, default_layout::<B>())
}

/// [`load`] with the weights held as `layout` says (tests compare the two).
pub fn load_with<B: Backend>(
    path: &Path,
    expected_digest: Option<[u8; 32]>,
    max_positions: usize,
    device: &B::Device,
    layout: WeightLayout,
) -> Result<LoadedModel<B>, LoadError> {
    let dtype = burn::tensor::get_device_settings::<B>(device).float_dtype;
    load_with_dtype(path, expected_digest, max_positions, device, layout, dtype)
}

/// [`load_with`] with the float tensors (weights, activations, keys and
/// values on the backend) of type `dtype` rather than the device's default:
/// f16 instead of CUDA's bf16 keeps quantised weights' values more closely
/// (see `tests/bf16.rs`).
pub fn load_with_dtype<B: Backend>(
    path: &Path,
    expected_digest: Option<[u8; 32]>,
    max_positions: usize,
    device: &B::Device,
    layout: WeightLayout,
    dtype: FloatDType,
) -> Result<LoadedModel<B>, LoadError> {
    if !B::supports_dtype(device, dtype.into()) {
        return Err(LoadError::Config(format!("the {} device does not compute {dtype:?} tensors", B::name(device))));
    }
    let files = ModelFiles::open(path)?;
    let hashing = bar(files.total_bytes(), "hashing model  {bar:40} {bytes}/{total_bytes} {bytes_per_sec}");
    let digest = files.digest(&hashing);
    hashing.finish_and_clear();
    if let Some(expected) = expected_digest
        && expected != digest
    {
        return Err(LoadError::DigestMismatch { expected: hex::encode(expected), found: hex::encode(digest) });
    }
    let building = bar(0, "loading layers {bar:40} {pos}/{len}");
    let progress = |done: usize, total: usize| {
        building.set_length(total as u64);
        building.set_position(done as u64);
    };
    let (model, codec) = match files.kind {
        ModelKind::Gguf => {
            let file = files.files[0].1.as_ref();
            let gguf = Gguf::parse(file)?;
            let config = ModelConfig::from_gguf(&gguf)?;
            let codec = TextCodec::from_gguf(&gguf)?;
            let src = GgufWeights {
                gguf: &gguf,
                file,
                architecture: config.architecture,
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
            };
            (Model::load(config, &src, device, max_positions, layout, dtype, progress)?, codec)
        }
        ModelKind::HuggingFace => {
            let need = |n: &str| files.get(n).ok_or_else(|| LoadError::Io(format!("{}: no {n}", path.display())));
            let config = ModelConfig::from_hf_json(need("config.json")?)?;
            let codec = TextCodec::from_hf(
                need("tokenizer.json")?,
                need("tokenizer_config.json")?,
                files.get("generation_config.json"),
            )?;
            let shards: Vec<&[u8]> =
                files.files.iter().filter(|(n, _)| n.ends_with(".safetensors")).map(|(_, m)| &m[..]).collect();
            let src = SafetensorsWeights::new(&shards)?;
            (Model::load(config, &src, device, max_positions, layout, dtype, progress)?, codec)
        }
    };
    building.finish_and_clear();
    if codec.vocab_size() > model.config.vocab_size {
        return Err(LoadError::Tokenizer(format!(
            "the tokenizer has {} tokens but the model's embedding only {}",
            codec.vocab_size(),
            model.config.vocab_size
        )));
    }
    Ok(LoadedModel { model, codec, digest })
}

/// The digest of a model without loading it (for writing configs).
pub fn model_digest(path: &Path) -> Result<[u8; 32], LoadError> {
    let files = ModelFiles::open(path)?;
    Ok(files.digest(&ProgressBar::hidden()))
}

/// Where `make model` puts the embedded default model, relative to the
/// repository root.
pub const DEFAULT_MODEL_FILE: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `make demo`, the tests and the benchmark look for the default model:
/// `COCOON_MODEL`, else [`DEFAULT_MODEL_FILE`] under `repo_root`. The root is
/// the caller's (a test's `CARGO_MANIFEST_DIR`), never baked in here: this
/// library is in the guest image, whose bytes must not depend on the
/// checkout's path (an unused function's unwind table still did).
pub fn default_model_path(repo_root: &Path) -> PathBuf {
    std::env::var_os("COCOON_MODEL").map(PathBuf::from).unwrap_or_else(|| repo_root.join(DEFAULT_MODEL_FILE))
}
