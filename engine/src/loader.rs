//! Finding, hashing and loading a model from a GGUF file or a Hugging Face directory.
//!
//! The model digest is computed over exactly the bytes the weights and tokenizer
//! are then parsed from: each file is read once into the enclave's own memory
//! and hashed as it is read, before anything is parsed, so a model that does
//! not match the expected digest is refused before its contents are trusted.
//! The files live on storage the host controls, so nothing is read from them
//! twice: a memory map would let the host change pages (or serve other bytes
//! when an evicted page is read again) between the hash and the parse. The
//! cost is that the file's bytes and the loaded weights are both in memory
//! while the model loads; the file's copy is freed once it is loaded.
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

/// A model file or directory, read into memory in digest order, and its digest.
pub struct ModelFiles {
    pub kind: ModelKind,
    files: Vec<(String, Vec<u8>)>,
    digest: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Gguf,
    HuggingFace,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LoadError + '_ {
    move |e| LoadError::Io(format!("{}: {e}", path.display()))
}

/// Reads the `len` bytes of `path` into memory, hashing them into `h` as they
/// arrive; refused when the file does not hold exactly `len` bytes by the end
/// (it changed while being read).
fn read_hashing(path: &Path, len: u64, h: &mut Sha256, progress: &ProgressBar) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let size = usize::try_from(len).map_err(|_| LoadError::Io(format!("{}: {len} bytes", path.display())))?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(size).map_err(|_| {
        LoadError::Io(format!("{}: not enough memory to hold its {len} bytes while it is verified", path.display()))
    })?;
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut chunk = vec![0u8; 8 << 20];
    loop {
        let want = (size - bytes.len()).min(chunk.len()).max(1);
        let n = file.read(&mut chunk[..want]).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        if bytes.len() + n > size {
            return Err(LoadError::Io(format!("{} grew while it was read (expected {len} bytes)", path.display())));
        }
        h.update(&chunk[..n]);
        bytes.extend_from_slice(&chunk[..n]);
        progress.inc(n as u64);
    }
    if bytes.len() != size {
        return Err(LoadError::Io(format!(
            "{} shrank while it was read: {} of the expected {len} bytes",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

impl ModelFiles {
    /// Reads and hashes the model (see the module documentation).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        Self::read(path, &ProgressBar::hidden())
    }

    /// [`ModelFiles::open`], showing progress on `progress` (its length is set here).
    pub fn read(path: &Path, progress: &ProgressBar) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let mut h = Sha256::new();
        if meta.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            progress.set_length(meta.len());
            let bytes = read_hashing(path, meta.len(), &mut h, progress)?;
            return Ok(ModelFiles { kind: ModelKind::Gguf, files: vec![(name, bytes)], digest: h.finalize().into() });
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
        let mut sizes = Vec::new();
        for name in names.iter().chain(&shards) {
            let p = path.join(name);
            let len = std::fs::metadata(&p).map_err(io_err(&p))?.len();
            if name.ends_with(".json") && len > MAX_JSON {
                return Err(LoadError::Io(format!("{} is {len} bytes; the limit is {MAX_JSON}", p.display())));
            }
            sizes.push((name.clone(), p, len));
        }
        progress.set_length(sizes.iter().map(|(_, _, len)| len).sum());
        let mut files = Vec::new();
        for (name, p, len) in sizes {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(len.to_be_bytes());
            let bytes = read_hashing(&p, len, &mut h, progress)?;
            files.push((name, bytes));
        }
        Ok(ModelFiles { kind: ModelKind::HuggingFace, files, digest: h.finalize().into() })
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, m)| &m[..])
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// The model digest (see the module documentation) of the bytes held.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
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
    if crate::is_cpu_backend::<B>() { WeightLayout::PackedInt16 } else { WeightLayout::Dense }
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
    let hashing = bar(0, "reading model  {bar:40} {bytes}/{total_bytes} {bytes_per_sec}");
    let files = ModelFiles::read(path, &hashing)?;
    let digest = files.digest();
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
    Ok(ModelFiles::open(path)?.digest())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hole 6: the digest was computed over a memory map of storage the host
    /// controls, and the weights were parsed from the same map in a second
    /// pass; the host could change the bytes in between. The bytes parsed
    /// must be exactly the bytes hashed, whatever happens to the file.
    #[test]
    fn the_bytes_parsed_are_the_bytes_hashed_whatever_the_host_does_to_the_file() {
        use std::io::{Seek, Write};
        let dir = std::env::temp_dir().join(format!("cocoon-loader-toctou-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.gguf");
        let original: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let files = ModelFiles::open(&path).unwrap();
        let digest = files.digest();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&original)));
        // The host rewrites the file in place between the hash and the parse.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&vec![0x5a; original.len()]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert!(files.files[0].1[..] == original[..], "the bytes to parse changed after they were hashed");
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&files.files[0].1)), digest);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
