//! The decoder's hyper-parameters, read from a Hugging Face `config.json` or
//! from GGUF metadata.

use serde::Deserialize;

use crate::LoadError;
use crate::gguf::Gguf;

/// The families this decoder implements; they differ only in the switches below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

/// How rotary frequencies are stretched for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor.
    Linear {
        factor: f32,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2: biases on the q, k and v projections.
    pub attention_bias: bool,
    /// Qwen3: RMSNorm on each head of q and k before the rotation.
    pub qk_norm: bool,
}

/// Largest dimensions accepted: well beyond any model this engine could run,
/// small enough that products of them cannot overflow.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;

impl ModelConfig {
    fn validate(self) -> Result<Self, LoadError> {
        let bad = |what: &str, v: usize| LoadError::Config(format!("{what} is {v}; expected 1 to {MAX_DIM}"));
        for (what, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 || v > MAX_DIM {
                return Err(bad(what, v));
            }
        }
        if self.num_layers == 0 || self.num_layers > MAX_LAYERS {
            return Err(LoadError::Config(format!(
                "num_hidden_layers is {}; expected 1 to {MAX_LAYERS}",
                self.num_layers
            )));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(LoadError::Config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(LoadError::Config(format!("head_dim {} is odd; rotary embedding needs pairs", self.head_dim)));
        }
        if !(self.rope_theta > 0.0 && self.rms_norm_eps > 0.0) {
            return Err(LoadError::Config(format!(
                "rope_theta {} and rms_norm_eps {} must be positive",
                self.rope_theta, self.rms_norm_eps
            )));
        }
        Ok(self)
    }

    /// From a Hugging Face `config.json`.
    pub fn from_hf_json(json: &[u8]) -> Result<Self, LoadError> {
        let c: HfConfig = serde_json::from_slice(json).map_err(|e| LoadError::Config(format!("config.json: {e}")))?;
        let architecture = match c.model_type.as_str() {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(LoadError::Config(format!(
                    "model_type {other:?} is not supported; expected llama, mistral, qwen2 or qwen3"
                )));
            }
        };
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(LoadError::Config(format!("hidden_act {act:?} is not supported; expected silu")));
        }
        // transformers 5 writes `rope_parameters` (theta and scaling together); older
        // configs have `rope_theta` and `rope_scaling`.
        let rope_theta = c.rope_theta.or(c.rope_parameters.as_ref().and_then(|p| p.rope_theta)).unwrap_or(10_000.0);
        let rope_scaling = match c.rope_scaling.or(c.rope_parameters) {
            None => RopeScaling::None,
            Some(s) => match s.rope_type.as_deref().or(s.legacy_type.as_deref()).unwrap_or("default") {
                "linear" => RopeScaling::Linear { factor: s.factor },
                "llama3" => RopeScaling::Llama3 {
                    factor: s.factor,
                    low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                    original_max_position: s.original_max_position_embeddings.unwrap_or(8192),
                },
                "default" => RopeScaling::None,
                other => {
                    return Err(LoadError::Config(format!(
                        "rope_scaling type {other:?} is not supported; expected linear or llama3"
                    )));
                }
            },
        };
        ModelConfig {
            architecture,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
            vocab_size: c.vocab_size,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias: c.attention_bias.unwrap_or(architecture == Architecture::Qwen2),
            qk_norm: architecture == Architecture::Qwen3,
        }
        .validate()
    }

    /// From GGUF metadata (`<arch>.*` keys); tied embeddings are decided by the
    /// absence of `output.weight`.
    pub fn from_gguf(g: &Gguf) -> Result<Self, LoadError> {
        let arch = g.get_str("general.architecture")?;
        let architecture = match arch {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(LoadError::Config(format!(
                    "GGUF architecture {other:?} is not supported; expected llama, qwen2 or qwen3"
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let hidden_size = usize_of("embedding_length")?;
        let num_heads = usize_of("attention.head_count")?;
        let vocab_size = match usize_of("vocab_size") {
            Ok(v) => v,
            Err(_) => g.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear { factor: g.get_f64(&key("rope.scaling.factor"))? as f32 },
            Some(other) => {
                return Err(LoadError::Config(format!(
                    "GGUF rope scaling {other:?} is not supported; expected linear"
                )));
            }
        };
        ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: usize_of("feed_forward_length")?,
            num_layers: usize_of("block_count")?,
            num_heads,
            num_kv_heads: usize_of("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: usize_of("attention.key_length").unwrap_or(hidden_size / num_heads.max(1)),
            vocab_size,
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rope_scaling,
            max_position_embeddings: usize_of("context_length")?,
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            attention_bias: g.tensors.contains_key("blk.0.attn_q.bias"),
            qk_norm: g.tensors.contains_key("blk.0.attn_q_norm.weight"),
        }
        .validate()
    }

    /// The inverse frequencies of the rotary embedding, one per pair.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f32> =
            (0..half).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / self.head_dim as f32)).collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                let old = original_max_position as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f32,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    rope_parameters: Option<HfRopeScaling>,
    hidden_act: Option<String>,
    max_position_embeddings: usize,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    #[serde(default = "one")]
    factor: f32,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<u32>,
}

fn one() -> f32 {
    1.0
}
