//! A deterministic engine for tests: it answers with the words of the last
//! user message reversed and upper-cased, one word per token, so that a test
//! knows the exact answer and can search the wire for both prompt and answer.

use std::ops::ControlFlow;
use std::time::Duration;

use cocoon_engine::{Completion, Engine, EngineError, FinishReason, GenerationRequest, ModelInfo, Prompt, Role};
use sha2::{Digest, Sha256};

pub const MODEL_ID: &str = "cocoon-test-echo";

pub struct EchoEngine {
    info: ModelInfo,
    /// Pause after each token, so tests can see tokens arrive one by one.
    token_delay: Duration,
    /// Pause before the first token: a prefill, during which a stream has
    /// begun (the role chunk) but shown no token.
    prefill_delay: Duration,
}

impl EchoEngine {
    pub fn new(token_delay: Duration) -> Self {
        Self::serving(MODEL_ID, token_delay)
    }

    /// An echo engine under another model id, whose digest is the id's SHA-256.
    pub fn serving(model: &str, token_delay: Duration) -> Self {
        let info = ModelInfo { id: model.into(), digest: Sha256::digest(model).into(), context_length: 4096 };
        EchoEngine { info, token_delay, prefill_delay: Duration::ZERO }
    }

    pub fn with_prefill_delay(mut self, delay: Duration) -> Self {
        self.prefill_delay = delay;
        self
    }
}

/// The digest an echo engine serving `model` attests.
pub fn model_digest(model: &str) -> [u8; 32] {
    Sha256::digest(model).into()
}

/// The answer the engine gives to `prompt`, as its tokens.
pub fn answer_tokens(prompt: &str) -> Vec<String> {
    prompt.split_whitespace().rev().map(|w| format!("{} ", w.to_uppercase())).collect()
}

impl Engine for EchoEngine {
    fn model(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        emit: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let (prompt_tokens, last) = match &request.prompt {
            Prompt::Text(t) => (t.split_whitespace().count(), t.clone()),
            Prompt::Chat(messages) => {
                let last = messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.clone());
                let Some(last) = last else {
                    return Err(EngineError::InvalidRequest("no user message".into()));
                };
                (messages.iter().map(|m| m.content.split_whitespace().count()).sum(), last)
            }
        };
        let allowed = request.allowed_tokens(prompt_tokens as u32)?;
        let mut completion_tokens = 0u32;
        let mut text = String::new();
        if !self.prefill_delay.is_zero() {
            std::thread::sleep(self.prefill_delay);
        }
        for token in answer_tokens(&last) {
            if completion_tokens == allowed {
                return Ok(Completion {
                    prompt_tokens: prompt_tokens as u32,
                    completion_tokens,
                    cached_tokens: 0,
                    finish_reason: FinishReason::Length,
                });
            }
            text.push_str(&token);
            if request.stop.iter().any(|s| text.contains(s.as_str())) {
                break;
            }
            completion_tokens += 1;
            if emit(&token).is_break() {
                return Err(EngineError::Cancelled { prompt_tokens: prompt_tokens as u32, completion_tokens });
            }
            if !self.token_delay.is_zero() {
                std::thread::sleep(self.token_delay);
            }
        }
        Ok(Completion {
            prompt_tokens: prompt_tokens as u32,
            completion_tokens,
            cached_tokens: 0,
            finish_reason: FinishReason::Stop,
        })
    }
}
