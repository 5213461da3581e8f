//! Binary HTTP (RFC 9292) messages inside the seal.
//!
//! Whole messages are encoded and decoded with the `bhttp` crate. A streamed
//! response is an indeterminate-length message written and read
//! incrementally, which `bhttp` does not offer for byte pieces arriving from a
//! decryptor; the small encoder and decoder for that are here, and the tests
//! check both against `bhttp`.

use std::io::Cursor;

use bhttp::{Message, Mode, StatusCode};

use crate::ohttp::{Reader, write_varint};

/// Most header fields accepted in one field section.
pub const MAX_FIELDS: usize = 64;
/// Longest header name or value accepted.
pub const MAX_FIELD_LEN: usize = 8 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BhttpError {
    #[error("malformed Binary HTTP message: {0}")]
    Malformed(String),
    #[error("Binary HTTP message is a {found}, expected a {expected}")]
    WrongKind { expected: &'static str, found: &'static str },
    #[error("Binary HTTP {what} of {found} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, found: usize, limit: usize },
    #[error("Binary HTTP response stream ended before the message was complete")]
    Incomplete,
}

/// An HTTP request as the enclave's API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl InnerRequest {
    pub fn post_json(path: &str, body: Vec<u8>) -> Self {
        InnerRequest {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Dates the request (`date`, an RFC 9110 HTTP-date) so that the enclave
    /// can refuse it outside its replay window; replaces any earlier date.
    pub fn stamp(&mut self, at: std::time::SystemTime) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("date"));
        self.headers.push(("date".into(), httpdate::fmt_http_date(at)));
    }

    /// The request's `date`: `None` when absent, an error when it is not an HTTP-date.
    pub fn date(&self) -> Result<Option<std::time::SystemTime>, String> {
        match self.header("date") {
            None => Ok(None),
            Some(v) => httpdate::parse_http_date(v).map(Some).map_err(|_| {
                format!("date: expected an HTTP-date such as \"Sun, 06 Nov 1994 08:49:37 GMT\", found {v:?}")
            }),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut m = Message::request(
            self.method.as_bytes().to_vec(),
            b"https".to_vec(),
            b"cocoon.enclave".to_vec(),
            self.path.as_bytes().to_vec(),
        );
        for (n, v) in &self.headers {
            m.put_header(n.as_bytes(), v.as_bytes());
        }
        m.write_content(&self.body);
        let mut out = Vec::new();
        m.write_bhttp(Mode::KnownLength, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BhttpError> {
        let m = read_message(bytes)?;
        let control = m.control();
        let (Some(method), Some(path)) = (control.method(), control.path()) else {
            return Err(BhttpError::WrongKind { expected: "request", found: "response" });
        };
        Ok(InnerRequest {
            method: text(method, "method")?,
            path: text(path, "path")?,
            headers: fields(m.header().fields())?,
            body: m.content().to_vec(),
        })
    }
}

/// A whole HTTP response inside the seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl InnerResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn encode(&self) -> Vec<u8> {
        let status = StatusCode::try_from(self.status).unwrap_or(StatusCode::try_from(500u16).expect("valid"));
        let mut m = Message::response(status);
        for (n, v) in &self.headers {
            m.put_header(n.as_bytes(), v.as_bytes());
        }
        m.write_content(&self.body);
        let mut out = Vec::new();
        m.write_bhttp(Mode::KnownLength, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BhttpError> {
        let m = read_message(bytes)?;
        let Some(status) = m.control().status() else {
            return Err(BhttpError::WrongKind { expected: "response", found: "request" });
        };
        Ok(InnerResponse { status: status.code(), headers: fields(m.header().fields())?, body: m.content().to_vec() })
    }
}

fn read_message(bytes: &[u8]) -> Result<Message, BhttpError> {
    if bytes.len() > crate::limits::MAX_SEALED_RESPONSE {
        return Err(BhttpError::TooLarge {
            what: "message",
            found: bytes.len(),
            limit: crate::limits::MAX_SEALED_RESPONSE,
        });
    }
    let mut cursor = Cursor::new(bytes);
    let m = Message::read_bhttp(&mut cursor).map_err(|e| BhttpError::Malformed(e.to_string()))?;
    if m.header().fields().len() > MAX_FIELDS {
        return Err(BhttpError::TooLarge { what: "field count", found: m.header().fields().len(), limit: MAX_FIELDS });
    }
    Ok(m)
}

fn text(bytes: &[u8], what: &str) -> Result<String, BhttpError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| BhttpError::Malformed(format!("{what} is not UTF-8")))
}

fn fields(fields: &[bhttp::Field]) -> Result<Vec<(String, String)>, BhttpError> {
    fields.iter().map(|f| Ok((text(f.name(), "field name")?, text(f.value(), "field value")?))).collect()
}

/// Writes an indeterminate-length response (RFC 9292 section 3.2) piece by piece.
pub struct StreamingResponseEncoder;

impl StreamingResponseEncoder {
    /// Framing indicator, status and header section.
    pub fn head(status: u16, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, 3);
        write_varint(&mut out, u64::from(status));
        for (n, v) in headers {
            write_varint(&mut out, n.len() as u64);
            out.extend_from_slice(n.as_bytes());
            write_varint(&mut out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        write_varint(&mut out, 0);
        out
    }

    /// One content chunk (empty input writes nothing: an empty chunk would end the content).
    pub fn content(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 8);
        if !data.is_empty() {
            write_varint(&mut out, data.len() as u64);
            out.extend_from_slice(data);
        }
        out
    }

    /// Content terminator and an empty trailer section.
    pub fn end() -> Vec<u8> {
        vec![0, 0]
    }
}

/// Events of a streamed response, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEvent {
    Head { status: u16, headers: Vec<(String, String)> },
    Content(Vec<u8>),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Framing,
    Status,
    Fields { trailers: bool },
    Content,
    Done,
}

/// Reads an indeterminate-length (or known-length) response from byte pieces.
pub struct StreamingResponseDecoder {
    buf: Vec<u8>,
    state: State,
    indeterminate: bool,
    status: u16,
}

impl Default for StreamingResponseDecoder {
    fn default() -> Self {
        StreamingResponseDecoder { buf: Vec::new(), state: State::Framing, indeterminate: true, status: 0 }
    }
}

impl StreamingResponseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds plaintext; returns the events it completes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<ResponseEvent>, BhttpError> {
        self.buf.extend_from_slice(data);
        let mut events = Vec::new();
        let buf = std::mem::take(&mut self.buf);
        let mut r = Reader::new(&buf);
        loop {
            // A state that needs more bytes must not consume any of what it saw.
            let checkpoint = r.rest();
            let progressed = match self.state {
                State::Framing => match r.varint() {
                    Some(1) => {
                        self.indeterminate = false;
                        self.state = State::Status;
                        true
                    }
                    Some(3) => {
                        self.state = State::Status;
                        true
                    }
                    Some(0 | 2) => return Err(BhttpError::WrongKind { expected: "response", found: "request" }),
                    Some(t) => return Err(BhttpError::Malformed(format!("unknown framing indicator {t}"))),
                    None => false,
                },
                State::Status => match r.varint() {
                    Some(s @ 100..=199) => {
                        // Informational responses are skipped along with their fields.
                        self.status = s as u16;
                        self.state = State::Fields { trailers: false };
                        true
                    }
                    Some(s @ 200..=599) => {
                        self.status = s as u16;
                        self.state = State::Fields { trailers: false };
                        true
                    }
                    Some(s) => return Err(BhttpError::Malformed(format!("invalid status {s}"))),
                    None => false,
                },
                State::Fields { trailers } => match read_fields(self.indeterminate, &mut r)? {
                    Some(fields) => {
                        if trailers {
                            self.state = State::Done;
                            events.push(ResponseEvent::End);
                        } else if self.status < 200 {
                            self.state = State::Status;
                        } else {
                            self.state = State::Content;
                            events.push(ResponseEvent::Head { status: self.status, headers: fields });
                        }
                        true
                    }
                    None => false,
                },
                State::Content => match read_content(&mut r)? {
                    Some(Some(chunk)) => {
                        events.push(ResponseEvent::Content(chunk));
                        if !self.indeterminate {
                            self.state = State::Fields { trailers: true };
                        }
                        true
                    }
                    Some(None) => {
                        self.state = State::Fields { trailers: true };
                        true
                    }
                    None => false,
                },
                State::Done => {
                    // Only padding (zero bytes) may follow a complete message.
                    if r.rest().iter().any(|&b| b != 0) {
                        return Err(BhttpError::Malformed("data after the end of the message".into()));
                    }
                    r.take(r.rest().len());
                    false
                }
            };
            if !progressed {
                r = Reader::new(checkpoint);
                break;
            }
        }
        self.buf = r.rest().to_vec();
        let limit = crate::limits::MAX_CHUNK_CIPHERTEXT + MAX_FIELDS * MAX_FIELD_LEN;
        if self.buf.len() > limit {
            return Err(BhttpError::TooLarge { what: "pending data", found: self.buf.len(), limit });
        }
        Ok(events)
    }
}

/// A field section; `None` when more bytes are needed.
fn read_fields(indeterminate: bool, r: &mut Reader<'_>) -> Result<Option<Vec<(String, String)>>, BhttpError> {
    let mut fields = Vec::new();
    if !indeterminate {
        let Some(len) = r.varint() else { return Ok(None) };
        let len = bounded(len, MAX_FIELDS * MAX_FIELD_LEN, "field section")?;
        let Some(section) = r.take(len) else { return Ok(None) };
        let mut s = Reader::new(section);
        while !s.is_empty() {
            let (n, v) = read_field(&mut s)?.ok_or_else(|| BhttpError::Malformed("field truncated".into()))?;
            push_field(&mut fields, n, v)?;
        }
        return Ok(Some(fields));
    }
    loop {
        // A zero name length ends an indeterminate-length section.
        let mut peek = Reader::new(r.rest());
        match peek.varint() {
            None => return Ok(None),
            Some(0) => {
                *r = peek;
                return Ok(Some(fields));
            }
            Some(_) => {}
        }
        let Some((n, v)) = read_field(r)? else { return Ok(None) };
        push_field(&mut fields, n, v)?;
    }
}

/// `Some(Some(chunk))` for a content chunk, `Some(None)` at the content's end.
fn read_content(r: &mut Reader<'_>) -> Result<Option<Option<Vec<u8>>>, BhttpError> {
    let Some(len) = r.varint() else { return Ok(None) };
    if len == 0 {
        return Ok(Some(None));
    }
    let len = bounded(len, crate::limits::MAX_STREAMED_RESPONSE, "content chunk")?;
    Ok(r.take(len).map(|c| Some(c.to_vec())))
}

fn read_field(r: &mut Reader<'_>) -> Result<Option<(String, String)>, BhttpError> {
    let Some(name_len) = r.varint() else { return Ok(None) };
    let Some(name) = r.take(bounded(name_len, MAX_FIELD_LEN, "field name")?) else { return Ok(None) };
    let Some(value_len) = r.varint() else { return Ok(None) };
    let Some(value) = r.take(bounded(value_len, MAX_FIELD_LEN, "field value")?) else { return Ok(None) };
    Ok(Some((text(name, "field name")?, text(value, "field value")?)))
}

fn push_field(fields: &mut Vec<(String, String)>, name: String, value: String) -> Result<(), BhttpError> {
    if fields.len() >= MAX_FIELDS {
        return Err(BhttpError::TooLarge { what: "field count", found: fields.len() + 1, limit: MAX_FIELDS });
    }
    fields.push((name, value));
    Ok(())
}

fn bounded(len: u64, limit: usize, what: &'static str) -> Result<usize, BhttpError> {
    match usize::try_from(len) {
        Ok(n) if n <= limit => Ok(n),
        _ => Err(BhttpError::TooLarge { what, found: usize::try_from(len).unwrap_or(usize::MAX), limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_date_round_trips_and_replaces() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        let mut r = InnerRequest::post_json("/v1/chat/completions", b"{}".to_vec());
        assert_eq!(r.date(), Ok(None));
        r.stamp(std::time::UNIX_EPOCH);
        r.stamp(at);
        let back = InnerRequest::decode(&r.encode()).unwrap();
        assert_eq!(back.header("date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(back.headers.iter().filter(|(n, _)| n == "date").count(), 1);
        assert_eq!(back.date(), Ok(Some(at)));
        r.headers.push(("Date".into(), "yesterday".into()));
        r.headers.retain(|(n, _)| n != "date");
        assert!(r.date().unwrap_err().contains("\"yesterday\""));
    }

    #[test]
    fn streaming_encoder_is_read_by_bhttp() {
        let mut bytes = StreamingResponseEncoder::head(200, &[("content-type", "text/event-stream")]);
        bytes.extend(StreamingResponseEncoder::content(b"data: one\n\n"));
        bytes.extend(StreamingResponseEncoder::content(b""));
        bytes.extend(StreamingResponseEncoder::content(b"data: two\n\n"));
        bytes.extend(StreamingResponseEncoder::end());
        let m = Message::read_bhttp(&mut Cursor::new(&bytes[..])).unwrap();
        assert_eq!(m.control().status().unwrap().code(), 200);
        assert_eq!(m.header().get(b"content-type").unwrap(), b"text/event-stream");
        assert_eq!(m.content(), b"data: one\n\ndata: two\n\n");
    }

    #[test]
    fn streaming_decoder_reads_bhttp_output_byte_by_byte() {
        for mode in [Mode::IndeterminateLength, Mode::KnownLength] {
            let mut m = Message::response(StatusCode::try_from(201u16).unwrap());
            m.put_header("x-a", "1");
            m.put_header("x-b", "two");
            m.write_content(b"hello world");
            let mut bytes = Vec::new();
            m.write_bhttp(mode, &mut bytes).unwrap();
            let mut d = StreamingResponseDecoder::new();
            let mut events = Vec::new();
            for b in &bytes {
                events.extend(d.push(&[*b]).unwrap());
            }
            assert!(d.is_done(), "{mode:?}");
            let content: Vec<u8> = events
                .iter()
                .filter_map(|e| if let ResponseEvent::Content(c) = e { Some(c.clone()) } else { None })
                .flatten()
                .collect();
            assert_eq!(content, b"hello world");
            assert_eq!(
                events[0],
                ResponseEvent::Head {
                    status: 201,
                    headers: vec![("x-a".into(), "1".into()), ("x-b".into(), "two".into())]
                }
            );
            assert_eq!(events.last(), Some(&ResponseEvent::End));
        }
    }

    #[test]
    fn decoder_rejects_requests_and_huge_lengths() {
        let req = InnerRequest::post_json("/v1/models", vec![]).encode();
        assert!(matches!(StreamingResponseDecoder::new().push(&req), Err(BhttpError::WrongKind { .. })));
        // indeterminate response, status 200, a field name claiming 2^30 bytes
        let evil = [3u8, 0x40, 200, 0xbf, 0xff, 0xff, 0xff];
        assert!(matches!(StreamingResponseDecoder::new().push(&evil), Err(BhttpError::TooLarge { .. })));
    }

    #[test]
    fn whole_messages_round_trip() {
        let req = InnerRequest::post_json("/v1/chat/completions", b"{}".to_vec());
        assert_eq!(InnerRequest::decode(&req.encode()).unwrap(), req);
        let resp = InnerResponse { status: 404, headers: vec![("a".into(), "b".into())], body: b"x".to_vec() };
        assert_eq!(InnerResponse::decode(&resp.encode()).unwrap(), resp);
        assert!(InnerResponse::decode(&req.encode()).is_err());
        assert!(InnerRequest::decode(&[0xff; 9]).is_err());
    }
}
