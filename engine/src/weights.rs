//! Named f32 weights from either file format, under Hugging Face names.

use safetensors::{Dtype, SafeTensors};

use crate::LoadError;
use crate::config::Architecture;
use crate::gguf::{Gguf, TensorType, dequantize};
use crate::quant::PackedMatrix;

/// A weight in PyTorch layout: shape slowest dimension first, row-major data.
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub trait WeightSource {
    /// The tensor under its Hugging Face name, or `None` when the file has no such tensor.
    fn get(&self, name: &str) -> Result<Option<Weight>, LoadError>;

    /// The matrix in its stored block format, or `None` when it is not stored
    /// in a format `quant` multiplies (or the file has no such tensor).
    fn get_packed(&self, _name: &str) -> Result<Option<PackedMatrix>, LoadError> {
        Ok(None)
    }
}

/// Tensors of a GGUF file, renamed and (for Llama) un-permuted to Hugging Face layout.
pub struct GgufWeights<'a> {
    pub gguf: &'a Gguf,
    pub file: &'a [u8],
    pub architecture: Architecture,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

/// llama.cpp's names for the Hugging Face ones this engine asks for.
fn gguf_name(hf: &str) -> Option<String> {
    let direct = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let short = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}"))
}

impl GgufWeights<'_> {
    /// llama.cpp's converter interleaves the rotary halves of q and k for Llama
    /// (GPT-J style); the decoder here uses Hugging Face's split halves. The
    /// heads to un-permute over, for the tensors that need it.
    fn rotary_heads(&self, gname: &str) -> Option<usize> {
        if self.architecture != Architecture::Llama {
            None
        } else if gname.ends_with("attn_q.weight") || gname.ends_with("attn_q.bias") {
            Some(self.num_heads)
        } else if gname.ends_with("attn_k.weight") || gname.ends_with("attn_k.bias") {
            Some(self.num_kv_heads)
        } else {
            None
        }
    }
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, name: &str) -> Result<Option<Weight>, LoadError> {
        let Some(gname) = gguf_name(name) else { return Ok(None) };
        let Some(info) = self.gguf.tensors.get(&gname) else { return Ok(None) };
        let data = dequantize(info.kind, &self.file[info.offset..info.offset + info.len]);
        let shape = info.shape();
        let data = match self.rotary_heads(&gname) {
            Some(heads) => {
                let cols: usize = shape[1..].iter().product();
                let order = unpermuted_order(shape[0], heads)?;
                let mut out = Vec::with_capacity(data.len());
                for r in order {
                    out.extend_from_slice(&data[r * cols..(r + 1) * cols]);
                }
                out
            }
            None => data,
        };
        Ok(Some(Weight { shape, data }))
    }

    fn get_packed(&self, name: &str) -> Result<Option<PackedMatrix>, LoadError> {
        let Some(gname) = gguf_name(name) else { return Ok(None) };
        let Some(info) = self.gguf.tensors.get(&gname) else { return Ok(None) };
        let shape = info.shape();
        let (Some(kind), &[rows, cols]) = (info.kind.block_format(), &shape[..]) else {
            return Ok(None);
        };
        let m = PackedMatrix::new(kind, rows, cols, self.file[info.offset..info.offset + info.len].to_vec())?;
        Ok(Some(match self.rotary_heads(&gname) {
            Some(heads) => m.permute_rows(&unpermuted_order(rows, heads)?),
            None => m,
        }))
    }
}

/// Inverse of llama.cpp's `permute`, as a row order: within each head, row
/// `s * half + j` of the Hugging Face weight is row `2j + s` of the file.
fn unpermuted_order(rows: usize, heads: usize) -> Result<Vec<usize>, LoadError> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(LoadError::Format(format!("{rows} rows cannot be split into {heads} rotary heads")));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                order[h * head_dim + s * half + j] = h * head_dim + 2 * j + s;
            }
        }
    }
    Ok(order)
}

/// Tensors from one or more safetensors files (a sharded checkpoint).
pub struct SafetensorsWeights<'a> {
    shards: Vec<SafeTensors<'a>>,
}

impl<'a> SafetensorsWeights<'a> {
    pub fn new(files: &[&'a [u8]]) -> Result<Self, LoadError> {
        let mut shards = Vec::new();
        for (i, bytes) in files.iter().enumerate() {
            shards.push(
                SafeTensors::deserialize(bytes)
                    .map_err(|e| LoadError::Format(format!("safetensors shard {i}: {e}")))?,
            );
        }
        Ok(SafetensorsWeights { shards })
    }
}

impl WeightSource for SafetensorsWeights<'_> {
    fn get(&self, name: &str) -> Result<Option<Weight>, LoadError> {
        for shard in &self.shards {
            let Ok(view) = shard.tensor(name) else { continue };
            let bytes = view.data();
            let kind = match view.dtype() {
                Dtype::F32 => TensorType::F32,
                Dtype::F16 => TensorType::F16,
                Dtype::BF16 => TensorType::BF16,
                other => {
                    return Err(LoadError::Format(format!("tensor {name} is {other:?}; expected F32, F16 or BF16")));
                }
            };
            return Ok(Some(Weight { shape: view.shape().to_vec(), data: dequantize(kind, bytes) }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, cols).swapaxes(1, 2)
        let (heads, head_dim, cols) = (2, 4, 3);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..head_dim / 2 {
                    let src = (h * head_dim + s * (head_dim / 2) + j) * cols;
                    let dst = (h * head_dim + 2 * j + s) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        let order = unpermuted_order(rows, heads).unwrap();
        let restored: Vec<f32> = order.iter().flat_map(|&r| permuted[r * cols..(r + 1) * cols].to_vec()).collect();
        assert_eq!(restored, hf);
    }

    #[test]
    fn maps_hugging_face_names() {
        assert_eq!(gguf_name("model.layers.12.self_attn.o_proj.weight").unwrap(), "blk.12.attn_output.weight");
        assert_eq!(gguf_name("model.embed_tokens.weight").unwrap(), "token_embd.weight");
        assert!(gguf_name("model.layers.1.unknown").is_none());
    }
}
