//! A verified worker and the sealed exchanges with it.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use cocoon_attestation::{AttestationError, Policy, VerifiedWorker, assess};
use cocoon_protocol::bhttp_msg::{BhttpError, InnerRequest, InnerResponse, ResponseEvent, StreamingResponseDecoder};
use cocoon_protocol::ohttp::{ChunkedResponseOpener, ClientRequest, OhttpError};
use cocoon_protocol::receipt::ReceiptError;
use cocoon_protocol::{Receipt, limits, media};

use crate::endorsements::{EndorsementError, EndorsementSources};
use crate::http::{HttpClient, join};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{what} answered HTTP {status}: {body}")]
    Status { what: &'static str, status: u16, body: String },
    #[error("evidence refused: {0}")]
    Attestation(#[from] AttestationError),
    #[error("verification inputs: {0}")]
    Endorsements(#[from] EndorsementError),
    #[error("sealed exchange: {0}")]
    Ohttp(#[from] OhttpError),
    #[error("sealed response: {0}")]
    Bhttp(#[from] BhttpError),
    #[error("receipt: {0}")]
    Receipt(#[from] ReceiptError),
    #[error("the worker answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Protocol(String),
}

/// A worker whose evidence passed the policy. Its keys come from that evidence.
pub struct Worker {
    base: String,
    http: HttpClient,
    verified: VerifiedWorker,
}

/// Fetches a worker's evidence document, for a new random nonce when `fresh`;
/// returns it with that nonce. Verifying it is the caller's next step.
pub async fn fetch_evidence(
    http: &HttpClient,
    base: &str,
    fresh: bool,
) -> Result<(Vec<u8>, Option<Vec<u8>>), ClientError> {
    let nonce = fresh.then(|| {
        let mut n = [0u8; 32];
        getrandom::fill(&mut n).expect("the operating system's random source failed");
        n.to_vec()
    });
    let path = match &nonce {
        Some(n) => format!("/v1/attestation?nonce={}", hex::encode(n)),
        None => "/v1/attestation".to_string(),
    };
    let uri = join(base, &path).map_err(ClientError::Http)?;
    let (status, body) = http.get(uri, limits::MAX_EVIDENCE).await.map_err(ClientError::Http)?;
    if !status.is_success() {
        return Err(ClientError::Status {
            what: "attestation endpoint",
            status: status.as_u16(),
            body: text_of(&body),
        });
    }
    Ok((body.to_vec(), nonce))
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(1024)]).trim().to_string()
}

impl Worker {
    /// Fetches the worker's evidence (fresh for a new nonce when `fresh`) and
    /// verifies it under `policy`. Nothing else is sent before this succeeds.
    pub async fn attest(base: &str, policy: &Policy, fresh: bool) -> Result<Self, ClientError> {
        Self::attest_with(base, policy, &EndorsementSources::default(), fresh).await
    }

    /// [`Worker::attest`] with the collateral and certificate sources that hardware evidence needs.
    pub async fn attest_with(
        base: &str,
        policy: &Policy,
        sources: &EndorsementSources,
        fresh: bool,
    ) -> Result<Self, ClientError> {
        let http = HttpClient::default();
        let (evidence, nonce) = fetch_evidence(&http, base, fresh).await?;
        let now = unix_now();
        let endorsements = sources.endorsements(&http, &evidence, now).await?;
        let verified = assess(&evidence, policy, nonce.as_deref(), now, &endorsements).into_result()?;
        Ok(Worker { base: base.to_string(), http, verified })
    }

    pub fn verified(&self) -> &VerifiedWorker {
        &self.verified
    }

    fn client_request(&self) -> Result<ClientRequest, ClientError> {
        Ok(ClientRequest::new(&self.verified.key_configs[0])?)
    }

    async fn post(&self, content_type: &'static str, sealed: Vec<u8>) -> Result<http::Response<Incoming>, ClientError> {
        let uri = join(&self.base, "/v1/ohttp").map_err(ClientError::Http)?;
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from(sealed)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = self.http.send(req).await.map_err(ClientError::Http)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), 4096).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(ClientError::Status { what: "gateway", status, body: text_of(&body) });
        }
        Ok(resp)
    }

    /// One sealed request and its whole sealed response (`message/ohttp-req`).
    pub async fn send(&self, request: &InnerRequest) -> Result<(InnerResponse, Option<Receipt>), ClientError> {
        let (sealed, opener) = self.client_request()?.seal(&request.encode())?;
        let request_hash: [u8; 32] = Sha256::digest(&sealed).into();
        let resp = self.post(media::OHTTP_REQUEST, sealed).await?;
        let receipt = verify_receipt(resp.headers(), &request_hash, &self.verified.receipt_key)?;
        let body = Limited::new(resp.into_body(), limits::MAX_SEALED_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Http(format!("reading the sealed response: {e}")))?
            .to_bytes();
        let inner = InnerResponse::decode(&opener.open(&body)?)?;
        Ok((inner, receipt))
    }

    /// One sealed request with a streamed, chunk-sealed response (`message/ohttp-chunked-req`).
    pub async fn stream(&self, request: &InnerRequest) -> Result<ResponseStream, ClientError> {
        let (sealed, opener) = self.client_request()?.seal_chunked(&request.encode())?;
        let request_hash: [u8; 32] = Sha256::digest(&sealed).into();
        let resp = self.post(media::OHTTP_CHUNKED_REQUEST, sealed).await?;
        Ok(ResponseStream {
            body: resp.into_body(),
            opener: Some(opener),
            decoder: StreamingResponseDecoder::new(),
            queue: VecDeque::new(),
            trailers: None,
            request_hash,
            receipt_key: self.verified.receipt_key,
            finished: false,
        })
    }
}

fn verify_receipt(
    headers: &HeaderMap,
    request_hash: &[u8; 32],
    key: &[u8; 32],
) -> Result<Option<Receipt>, ClientError> {
    let Some(v) = headers.get(media::RECEIPT_HEADER) else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .map_err(|e| ClientError::Receipt(ReceiptError::Malformed(format!("not base64: {e}"))))?;
    let receipt = Receipt::verify(&bytes, key)?;
    receipt.expect_request(request_hash)?;
    Ok(Some(receipt))
}

/// The events of a streamed sealed response, decrypted as they arrive.
pub struct ResponseStream {
    body: Incoming,
    opener: Option<ChunkedResponseOpener>,
    decoder: StreamingResponseDecoder,
    queue: VecDeque<ResponseEvent>,
    trailers: Option<HeaderMap>,
    request_hash: [u8; 32],
    receipt_key: [u8; 32],
    finished: bool,
}

impl ResponseStream {
    /// The next event; `None` after the authenticated end of the stream.
    pub async fn next_event(&mut self) -> Result<Option<ResponseEvent>, ClientError> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            if self.finished {
                return Ok(None);
            }
            let opener = self.opener.as_mut().expect("present until finished");
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let plain = opener.push(&data)?;
                        self.queue.extend(self.decoder.push(&plain)?);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => return Err(ClientError::Http(format!("response stream broke: {e}"))),
                None => {
                    let last = self.opener.take().expect("present until finished").finish()?;
                    self.queue.extend(self.decoder.push(&last)?);
                    if !self.decoder.is_done() {
                        return Err(BhttpError::Incomplete.into());
                    }
                    self.finished = true;
                }
            }
        }
    }

    /// The verified receipt, once the stream has ended (it travels as a trailer).
    pub fn receipt(&self) -> Result<Option<Receipt>, ClientError> {
        match &self.trailers {
            Some(t) => verify_receipt(t, &self.request_hash, &self.receipt_key),
            None => Ok(None),
        }
    }
}
