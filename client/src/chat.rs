//! Chat completions over a sealed, streamed exchange.

use serde::{Deserialize, Serialize};
use serde_json::json;

use cocoon_protocol::VerifiedReceipt;
use cocoon_protocol::bhttp_msg::{InnerRequest, ResponseEvent};

use crate::worker::{ClientError, Worker, api_error};

/// Longest Server-Sent Events line accepted.
const MAX_SSE_LINE: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub model: String,
    pub system: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone)]
pub struct ChatOutcome {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// The worker's receipt, verified under its attested key for this request.
    pub receipt: VerifiedReceipt,
}

/// What the stream said before its receipt arrived.
#[derive(Default)]
struct Answer {
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

/// The OpenAI chat request for `prompt`.
pub fn chat_request(prompt: &str, opts: &ChatOptions) -> serde_json::Value {
    let mut messages = Vec::new();
    if let Some(s) = &opts.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut req = json!({
        "model": opts.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(n) = opts.max_tokens {
        req["max_tokens"] = json!(n);
    }
    if let Some(t) = opts.temperature {
        req["temperature"] = json!(t);
    }
    if let Some(s) = opts.seed {
        req["seed"] = json!(s);
    }
    req
}

impl Worker {
    /// Sends `prompt` sealed, calls `on_delta` with each piece of the answer
    /// as it arrives, then verifies the receipt.
    pub async fn chat(
        &self,
        prompt: &str,
        opts: &ChatOptions,
        mut on_delta: impl FnMut(&str),
    ) -> Result<ChatOutcome, ClientError> {
        let body = serde_json::to_vec(&chat_request(prompt, opts)).expect("JSON encodes");
        let mut stream = self.stream(&InnerRequest::post_json("/v1/chat/completions", body)).await?;
        let mut status = 0;
        let mut error_body = Vec::new();
        let mut sse = SseParser::default();
        let mut out = Answer::default();
        while let Some(event) = stream.next_event().await? {
            match event {
                ResponseEvent::Head { status: s, .. } => status = s,
                ResponseEvent::Content(bytes) if status != 200 => error_body.extend(bytes),
                ResponseEvent::Content(bytes) => {
                    for data in sse.push(&bytes)? {
                        handle_event(&data, &mut out, &mut on_delta)?;
                    }
                }
                ResponseEvent::End => {}
            }
        }
        if status != 200 {
            return Err(api_error(status, &error_body));
        }
        let receipt = stream.receipt()?.ok_or(ClientError::NoReceipt)?;
        Ok(ChatOutcome { text: out.text, finish_reason: out.finish_reason, usage: out.usage, receipt })
    }
}

fn handle_event(data: &str, out: &mut Answer, on_delta: &mut impl FnMut(&str)) -> Result<(), ClientError> {
    if data == "[DONE]" {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| ClientError::Answer { what: "a stream event", reason: e.to_string() })?;
    if v.get("error").is_some() {
        return Err(api_error(200, data.as_bytes()));
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        out.usage = serde_json::from_value(u.clone()).ok();
    }
    if let Some(choice) = v["choices"].get(0) {
        if let Some(piece) = choice["delta"]["content"].as_str().filter(|p| !p.is_empty()) {
            out.text.push_str(piece);
            on_delta(piece);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            out.finish_reason = Some(f.to_string());
        }
    }
    Ok(())
}

/// Splits Server-Sent Events into their `data` payloads.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ClientError> {
        let mut events = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                if self.line.len() > MAX_SSE_LINE {
                    return Err(ClientError::Answer {
                        what: "a stream line",
                        reason: format!("longer than {MAX_SSE_LINE} bytes"),
                    });
                }
                continue;
            }
            let line = String::from_utf8(std::mem::take(&mut self.line))
                .map_err(|_| ClientError::Answer { what: "a stream line", reason: "not UTF-8".into() })?;
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_pieces() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").unwrap().is_empty());
        assert_eq!(p.push(b":1}\n\ndata: [DONE]\n\n").unwrap(), vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
    }
}
