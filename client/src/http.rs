//! A small HTTP/1.1 client over hyper (plain TCP to the host shim: the
//! content is sealed end to end, and evidence is self-authenticating).

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// Why an HTTP exchange failed, by step: a caller can tell a peer that
/// cannot be reached from one that answered badly.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("URL {url}: {reason}")]
    Url { url: String, reason: String },
    /// No connection, or it broke before the answer's head.
    #[error("{uri}: {detail}")]
    Connect { uri: String, detail: String },
    #[error("{uri} did not answer within {after:?}")]
    Timeout { uri: String, after: std::time::Duration },
    #[error("{uri} answered HTTP {status}")]
    Status { uri: String, status: u16 },
    /// The answer's body broke off or was larger than allowed.
    #[error("reading the answer of {uri}: {detail}")]
    Body { uri: String, detail: String },
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::with_connect_timeout(std::time::Duration::from_secs(10))
    }
}

/// An error with its chain of causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl HttpClient {
    pub fn with_connect_timeout(timeout: std::time::Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        HttpClient { inner: Client::builder(TokioExecutor::new()).build(connector) }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, HttpError> {
        let uri = req.uri().to_string();
        self.inner.request(req).await.map_err(|e| HttpError::Connect { uri, detail: chain(&e) })
    }

    /// GET with a bounded body.
    pub async fn get(&self, uri: Uri, limit: usize) -> Result<(http::StatusCode, Bytes), HttpError> {
        let at = uri.to_string();
        let req = Request::get(uri)
            .body(Full::default())
            .map_err(|e| HttpError::Url { url: at.clone(), reason: e.to_string() })?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| HttpError::Body { uri: at, detail: chain(e.as_ref()) })?
            .to_bytes();
        Ok((status, body))
    }
}

/// Joins a base URL and a path.
pub fn join(base: &str, path_and_query: &str) -> Result<Uri, HttpError> {
    let base = base.trim_end_matches('/');
    let url = format!("{base}{path_and_query}");
    url.parse().map_err(|e: http::uri::InvalidUri| HttpError::Url { url, reason: e.to_string() })
}
