//! The OpenAI-compatible API served inside the seal.
//!
//! Requests arrive as decoded Binary HTTP; replies are either a whole body or
//! a stream of Server-Sent Events, plus the completion's token counts for the
//! usage receipt.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use cocoon_engine::{ChatMessage, Completion, Engine, EngineError, GenerationRequest, PrefixKey, Prompt, Sampling};
use cocoon_protocol::bhttp_msg::InnerRequest;
use cocoon_protocol::limits::MAX_PROMPT_CACHE_KEY as MAX_CACHE_KEY;
use cocoon_protocol::price::CostCap;
use cocoon_protocol::proxy_api::{ApiError, ErrorCode};
use cocoon_protocol::{NanoTon, Prices, media};

pub use cocoon_protocol::limits::{DEFAULT_MAX_TOKENS, MAX_TOKENS_CAP};
const MAX_STOP_SEQUENCES: usize = 4;
const MAX_MESSAGES: usize = 512;
/// SSE events buffered between the engine and the network.
const STREAM_BUFFER: usize = 64;

pub struct ApiReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    /// A whole body; `Some` when it is the result of a completed generation.
    Full(Vec<u8>, Option<Completion>),
    /// SSE events as they are generated; `done` resolves when generation ends.
    Stream { events: mpsc::Receiver<Vec<u8>>, done: oneshot::Receiver<Option<Completion>> },
}

impl ApiReply {
    fn json(status: u16, v: serde_json::Value) -> Self {
        ApiReply { status, content_type: "application/json", body: ReplyBody::Full(v.to_string().into_bytes(), None) }
    }

    /// An OpenAI-style error body.
    pub fn error(status: u16, kind: &str, code: ErrorCode, message: impl Into<String>) -> Self {
        let body = ApiError::new(kind, code, message).to_bytes();
        ApiReply { status, content_type: "application/json", body: ReplyBody::Full(body, None) }
    }
}

/// HTTP status, OpenAI error type and code for an engine failure.
fn engine_error_kind(e: &EngineError) -> (u16, &'static str, ErrorCode) {
    match e {
        EngineError::Busy { .. } => (429, "server_busy", ErrorCode::Busy),
        EngineError::Budget(_) => (402, "invalid_request_error", ErrorCode::MaxCostExceeded),
        EngineError::InvalidRequest(_) | EngineError::ContextLength { .. } => {
            (400, "invalid_request_error", ErrorCode::InvalidRequest)
        }
        EngineError::Cancelled { .. } | EngineError::Internal(_) => (500, "server_error", ErrorCode::EngineFailed),
    }
}

fn engine_error(e: &EngineError) -> ApiReply {
    let (status, kind, code) = engine_error_kind(e);
    ApiReply::error(status, kind, code, e.to_string())
}

fn invalid(message: impl Into<String>) -> ApiReply {
    ApiReply::error(400, "invalid_request_error", ErrorCode::InvalidRequest, message)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A chat (`messages`) or text (`prompt`) completion request. Unknown fields
/// are refused: silently ignoring a parameter the client relies on would be worse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionRequest {
    model: String,
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    #[allow(dead_code)]
    user: Option<String>,
    /// OpenAI's prompt-cache key: requests with the same key may reuse each
    /// other's prompt prefix; without one nothing is reused. It travels
    /// sealed, so only the client that chose it can hit its cache.
    prompt_cache_key: Option<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }
}

/// Routes one inner request; `cap` is the applied cost cap ([`applied_cap`]).
pub async fn handle(
    engine: Option<Arc<dyn Engine>>,
    prices: Option<Prices>,
    req: InnerRequest,
    cap: Option<NanoTon>,
) -> ApiReply {
    let cost_cap = match (prices, cap) {
        (Some(prices), Some(max_cost)) => Some(CostCap { prices, max_cost }),
        _ => None,
    };
    let path = req.path.split('?').next().unwrap_or_default();
    let kind = match (req.method.as_str(), path) {
        ("GET", "/v1/models") => return models(engine.as_deref()),
        ("POST", "/v1/chat/completions") => Kind::Chat,
        ("POST", "/v1/completions") => Kind::Text,
        (_, "/v1/models" | "/v1/chat/completions" | "/v1/completions") => {
            return ApiReply::error(
                405,
                "invalid_request_error",
                ErrorCode::MethodNotAllowed,
                format!("{} {path}", req.method),
            );
        }
        _ => {
            return ApiReply::error(
                404,
                "invalid_request_error",
                ErrorCode::NotFound,
                format!("no route for {} {path}", req.method),
            );
        }
    };
    let mut r: CompletionRequest = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("request body: {e}")),
    };
    let prompt = match (kind, r.messages.take(), r.prompt.take()) {
        (Kind::Chat, Some(m), None) if !m.is_empty() && m.len() <= MAX_MESSAGES => Prompt::Chat(m),
        (Kind::Chat, Some(m), None) => {
            return invalid(format!("messages: expected 1 to {MAX_MESSAGES} messages, found {}", m.len()));
        }
        (Kind::Chat, _, _) => return invalid("chat completions take `messages` and no `prompt`"),
        (Kind::Text, None, Some(p)) if r.max_completion_tokens.is_none() => Prompt::Text(p),
        (Kind::Text, _, _) => {
            return invalid("completions take `prompt`, and neither `messages` nor `max_completion_tokens`");
        }
    };
    complete(engine, kind, prompt, r, cost_cap).await
}

/// The cost cap the enclave applies: the smaller of the sealed one (the
/// client's own limit, which the proxy cannot raise) and the outer one (the
/// proxy's share of what the client signed, which the client cannot raise).
/// The receipt states it, so whoever exceeded a cap can be told apart.
pub fn applied_cap(req: &InnerRequest, outer: Option<NanoTon>) -> Result<Option<NanoTon>, ApiReply> {
    let sealed = match req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(media::MAX_WORKER_COST_HEADER)) {
        None => None,
        Some((_, v)) => {
            Some(v.parse::<NanoTon>().map_err(|e| invalid(format!("{}: {e}", media::MAX_WORKER_COST_HEADER)))?)
        }
    };
    Ok(match (sealed, outer) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

fn models(engine: Option<&dyn Engine>) -> ApiReply {
    let data: Vec<_> = engine
        .map(|e| json!({"id": e.model().id, "object": "model", "created": 0, "owned_by": "cocoon"}))
        .into_iter()
        .collect();
    ApiReply::json(200, json!({"object": "list", "data": data}))
}

fn generation_request(prompt: Prompt, c: &CompletionRequest) -> Result<GenerationRequest, ApiReply> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(invalid("n: only 1 choice per request is supported"));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(format!("temperature: expected 0 to 2, found {temperature}")));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(format!("top_p: expected a value in (0, 1], found {top_p}")));
    }
    let stop = match &c.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP_SEQUENCES || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(invalid(format!(
            "stop: expected at most {MAX_STOP_SEQUENCES} non-empty strings of up to 256 bytes"
        )));
    }
    let max_tokens = c.max_completion_tokens.or(c.max_tokens);
    if max_tokens == Some(0) {
        return Err(invalid("max_tokens: expected at least 1"));
    }
    let prefix_key = match &c.prompt_cache_key {
        None => None,
        Some(k) if !k.is_empty() && k.len() <= MAX_CACHE_KEY => Some(PrefixKey::from_client_key(k)),
        Some(k) => {
            return Err(invalid(format!("prompt_cache_key: expected 1 to {MAX_CACHE_KEY} bytes, found {}", k.len())));
        }
    };
    Ok(GenerationRequest {
        prompt,
        prefix_key,
        max_tokens: max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(MAX_TOKENS_CAP),
        sampling: Sampling { temperature, top_p, top_k: c.top_k, seed: c.seed },
        stop,
        cost_cap: None,
    })
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    format!("{prefix}-{}", hex::encode(b))
}

fn usage_json(c: &Completion) -> serde_json::Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    })
}

async fn complete(
    engine: Option<Arc<dyn Engine>>,
    kind: Kind,
    prompt: Prompt,
    c: CompletionRequest,
    cost_cap: Option<CostCap>,
) -> ApiReply {
    // Parameters are checked first, so that all parsing of outside input
    // runs (and is fuzzed) without a model.
    let request = match generation_request(prompt, &c) {
        Ok(r) => GenerationRequest { cost_cap, ..r },
        Err(reply) => return reply,
    };
    let Some(engine) = engine else {
        return ApiReply::error(503, "server_error", ErrorCode::ModelNotLoaded, "this enclave has no model loaded");
    };
    let served = engine.model().id.clone();
    if c.model != served {
        return ApiReply::error(
            404,
            "invalid_request_error",
            ErrorCode::ModelNotFound,
            format!("model {:?} is not served here; this enclave serves {served:?}", c.model),
        );
    }
    let id = random_id(match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    });
    let g = Generation { engine, kind, request, id, created: crate::state::unix_now(), model: served };
    if c.stream { stream(g, c.stream_options.is_some_and(|o| o.include_usage)) } else { whole(g).await }
}

/// One generation, and the identity of the OpenAI objects that report it.
struct Generation {
    engine: Arc<dyn Engine>,
    kind: Kind,
    request: GenerationRequest,
    id: String,
    created: u64,
    model: String,
}

impl Generation {
    /// The OpenAI object (completion or stream chunk) around `choices`.
    fn envelope(&self, chunk: bool, choices: serde_json::Value, usage: Option<&Completion>) -> serde_json::Value {
        let mut v = json!({
            "id": self.id, "object": self.kind.object(chunk), "created": self.created, "model": self.model,
            "choices": choices,
        });
        if let Some(c) = usage {
            v["usage"] = usage_json(c);
        }
        v
    }
}

async fn whole(g: Generation) -> ApiReply {
    let result = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let done = g.engine.generate(&g.request, &mut |piece| {
            text.push_str(piece);
            ControlFlow::Continue(())
        });
        (g, done.map(|c| (text, c)))
    })
    .await;
    let (g, text, completion) = match result {
        Ok((g, Ok((text, c)))) => (g, text, c),
        Ok((_, Err(e))) => return engine_error(&e),
        Err(e) => {
            return ApiReply::error(500, "server_error", ErrorCode::EngineFailed, format!("engine task failed: {e}"));
        }
    };
    let choice = match g.kind {
        Kind::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": completion.finish_reason})
        }
        Kind::Text => json!({"index": 0, "text": text, "finish_reason": completion.finish_reason}),
    };
    let body = g.envelope(false, json!([choice]), Some(&completion));
    ApiReply {
        status: 200,
        content_type: "application/json",
        body: ReplyBody::Full(body.to_string().into_bytes(), Some(completion)),
    }
}

fn sse(v: &serde_json::Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

fn stream(g: Generation, include_usage: bool) -> ApiReply {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let chunk = |delta: serde_json::Value, finish: Option<cocoon_engine::FinishReason>| {
            let choice = match g.kind {
                Kind::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish}),
                Kind::Text => {
                    json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish})
                }
            };
            sse(&g.envelope(true, json!([choice]), None))
        };
        if matches!(g.kind, Kind::Chat)
            && tx.blocking_send(chunk(json!({"role": "assistant", "content": ""}), None)).is_err()
        {
            let _ = done_tx.send(None);
            return;
        }
        let result = g.engine.generate(&g.request, &mut |piece| match tx
            .blocking_send(chunk(json!({"content": piece}), None))
        {
            Ok(()) => ControlFlow::Continue(()),
            // The client went away: stop generating.
            Err(_) => ControlFlow::Break(()),
        });
        match result {
            Ok(completion) => {
                let _ = tx.blocking_send(chunk(json!({}), Some(completion.finish_reason)));
                if include_usage {
                    let _ = tx.blocking_send(sse(&g.envelope(true, json!([]), Some(&completion))));
                }
                let _ = tx.blocking_send(b"data: [DONE]\n\n".to_vec());
                let _ = done_tx.send(Some(completion));
            }
            // The client went away: what was generated is still metered (the receipt is kept for the proxy).
            Err(EngineError::Cancelled { prompt_tokens, completion_tokens }) => {
                let _ = done_tx.send(Some(Completion {
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens: 0,
                    finish_reason: cocoon_engine::FinishReason::Length,
                }));
            }
            Err(e) => {
                let (_, kind, code) = engine_error_kind(&e);
                let error = serde_json::to_value(ApiError::new(kind, code, e.to_string())).expect("JSON encodes");
                let _ = tx.blocking_send(sse(&error));
                let _ = done_tx.send(None);
            }
        }
    });
    ApiReply { status: 200, content_type: "text/event-stream", body: ReplyBody::Stream { events: rx, done: done_rx } }
}
