//! Text ↔ token ids (the `tokenizers` crate) and chat formatting with the
//! model's own Jinja template (`minijinja`).

use std::collections::BTreeSet;

use minijinja::{Environment, ErrorKind, context};
use serde::Deserialize;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::Gguf;
use crate::{ChatMessage, LoadError};

/// GPT-4-style split used by Llama 3 (`llama-bpe`) and Qwen 2 (`qwen2`, one digit at a time).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

pub struct TextCodec {
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    /// Prepend the beginning-of-sequence token to raw-text prompts.
    add_bos: bool,
    bos_id: Option<u32>,
    /// Tokens that end a generation.
    stop_ids: BTreeSet<u32>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec").field("vocab", &self.vocab_size()).field("stop_ids", &self.stop_ids).finish()
    }
}

fn tok_err(what: &str) -> impl Fn(tokenizers::Error) -> LoadError + '_ {
    move |e| LoadError::Tokenizer(format!("{what}: {e}"))
}

impl TextCodec {
    /// From the tokenizer embedded in a GGUF file (byte-level BPE models).
    pub fn from_gguf(g: &Gguf) -> Result<Self, LoadError> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LoadError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported; expected \"gpt2\" (byte-level BPE). \
                 Use the Hugging Face directory (tokenizer.json) of this model instead"
            )));
        }
        let tokens = g.get_strings("tokenizer.ggml.tokens")?;
        let merges = g
            .get_strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LoadError::Tokenizer(format!("BPE merge {m:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err("BPE"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("gpt2");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "gpt2" | "default" => byte_level.into(),
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "llama-bpe" | "llama3" | "qwen2" => {
                let pattern = if pre == "qwen2" { QWEN2_SPLIT } else { LLAMA3_SPLIT };
                let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(tok_err("pre-tokenizer pattern"))?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
            }
            other => {
                return Err(LoadError::Tokenizer(format!(
                    "GGUF pre-tokenizer {other:?} is not supported; expected gpt2, smollm, llama-bpe or qwen2"
                )));
            }
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        if let Some(types) = g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter_map(|(t, tok)| match t.as_u64() {
                    Some(TOKEN_TYPE_CONTROL) => Some(AddedToken::from(*tok, true)),
                    Some(TOKEN_TYPE_USER_DEFINED) => Some(AddedToken::from(*tok, false).normalized(false)),
                    _ => None,
                })
                .collect();
            tokenizer.add_special_tokens(&special);
        }
        let token = |key: &str| g.get_u64(key).ok().and_then(|id| tokens.get(id as usize)).map(|t| t.to_string());
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        let mut stop_ids: BTreeSet<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| g.get_u64(k).ok())
            .map(|id| id as u32)
            .collect();
        // `<|im_end|>` ends a turn in ChatML models even where the file names another eos.
        stop_ids.extend(tokenizer.token_to_id("<|im_end|>"));
        let add_bos = matches!(g.get("tokenizer.ggml.add_bos_token"), Some(crate::gguf::Value::Bool(true)));
        let chat_template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
        Self::finish(tokenizer, chat_template, bos, eos, add_bos, stop_ids)
    }

    /// From a Hugging Face directory's `tokenizer.json`, `tokenizer_config.json`
    /// and (optional) `generation_config.json`.
    pub fn from_hf(
        tokenizer_json: &[u8],
        tokenizer_config: &[u8],
        generation_config: Option<&[u8]>,
    ) -> Result<Self, LoadError> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(tok_err("tokenizer.json"))?;
        let cfg: HfTokenizerConfig = serde_json::from_slice(tokenizer_config)
            .map_err(|e| LoadError::Tokenizer(format!("tokenizer_config.json: {e}")))?;
        let chat_template = match cfg.chat_template {
            None => None,
            Some(TemplateField::One(t)) => Some(t),
            Some(TemplateField::Named(list)) => list.into_iter().find(|t| t.name == "default").map(|t| t.template),
        };
        let bos = cfg.bos_token.and_then(SpecialToken::content);
        let eos = cfg.eos_token.and_then(SpecialToken::content);
        let mut stop_ids: BTreeSet<u32> = eos.iter().filter_map(|e| tokenizer.token_to_id(e)).collect();
        if let Some(gen_cfg) = generation_config {
            let g: HfGenerationConfig = serde_json::from_slice(gen_cfg)
                .map_err(|e| LoadError::Tokenizer(format!("generation_config.json: {e}")))?;
            match g.eos_token_id {
                Some(IdField::One(id)) => {
                    stop_ids.insert(id);
                }
                Some(IdField::Many(ids)) => stop_ids.extend(ids),
                None => {}
            }
        }
        // tokenizer.json's post-processor adds BOS where the model wants it.
        Self::finish(tokenizer, chat_template, bos, eos, false, stop_ids)
    }

    fn finish(
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        bos: Option<String>,
        eos: Option<String>,
        add_bos: bool,
        stop_ids: BTreeSet<u32>,
    ) -> Result<Self, LoadError> {
        if stop_ids.is_empty() {
            return Err(LoadError::Tokenizer("the model names no end-of-sequence token".into()));
        }
        let bos_id = bos.as_deref().and_then(|b| tokenizer.token_to_id(b));
        let codec = TextCodec { tokenizer, chat_template, bos, eos, add_bos, bos_id, stop_ids };
        if let Some(t) = &codec.chat_template {
            // A template that does not compile is a load error, not a per-request one.
            template_env().template_from_str(t).map_err(|e| LoadError::Tokenizer(format!("chat template: {e}")))?;
        }
        Ok(codec)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The prompt text for a conversation, ending with the assistant's turn opening.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let Some(template) = &self.chat_template else {
            return Err("this model has no chat template; use /v1/completions with a text prompt".into());
        };
        let env = template_env();
        let t = env.template_from_str(template).map_err(|e| format!("chat template: {e}"))?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.as_deref().unwrap_or(""),
            eos_token => self.eos.as_deref().unwrap_or(""),
        })
        .map_err(|e| format!("chat template: {e}"))
    }

    /// Token ids of a rendered chat (special tokens written in the text are matched;
    /// nothing is added).
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>, String> {
        self.encode(text, false)
    }

    /// Token ids of a raw text prompt, with the model's beginning-of-sequence token.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = self.encode(text, true)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        let enc = self.tokenizer.encode_fast(text, add_special).map_err(|e| format!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, true).map_err(|e| format!("detokenizing: {e}"))
    }
}

fn template_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env
}

/// Turns token ids into text as they arrive, holding back bytes until they form
/// whole characters (a byte-level BPE token can end inside a UTF-8 sequence).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the tokens decoded for context (so leading spaces come out right).
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

impl StreamDecoder {
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String, String> {
        self.ids.push(id);
        let before = codec.decode(&self.ids[self.prefix..self.read])?;
        let now = codec.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(now[before.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }
}

#[derive(Deserialize)]
struct HfTokenizerConfig {
    chat_template: Option<TemplateField>,
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Plain(String),
    Added { content: String },
    Null(()),
}

impl SpecialToken {
    fn content(self) -> Option<String> {
        match self {
            SpecialToken::Plain(s) | SpecialToken::Added { content: s } => Some(s),
            SpecialToken::Null(()) => None,
        }
    }
}

#[derive(Deserialize)]
struct HfGenerationConfig {
    eos_token_id: Option<IdField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdField {
    One(u32),
    Many(Vec<u32>),
}
