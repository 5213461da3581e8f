//! A small HTTP/1.1 client over hyper (plain TCP to the host shim: the
//! content is sealed end to end, and evidence is self-authenticating).

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::with_connect_timeout(std::time::Duration::from_secs(10))
    }
}

impl HttpClient {
    pub fn with_connect_timeout(timeout: std::time::Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        HttpClient { inner: Client::builder(TokioExecutor::new()).build(connector) }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        self.inner.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })
    }

    /// GET with a bounded body.
    pub async fn get(&self, uri: Uri, limit: usize) -> Result<(http::StatusCode, Bytes), String> {
        let req = Request::get(uri).body(Full::default()).map_err(|e| e.to_string())?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading response body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Joins a base URL and a path.
pub fn join(base: &str, path_and_query: &str) -> Result<Uri, String> {
    let base = base.trim_end_matches('/');
    format!("{base}{path_and_query}").parse().map_err(|e| format!("URL {base}{path_and_query}: {e}"))
}
