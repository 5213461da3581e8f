//! The TON HTTP API (toncenter v2) subset COCOON uses: `sendBoc`,
//! `runGetMethod`, `getAddressInformation`, `getWalletInformation`. The same
//! client talks to toncenter (https, optional API key) and to the local
//! emulated chain of the tests (`contracts/chain/server.js`).
//!
//! Answers are bounded and checked; an answer that does not parse is an
//! error naming what was expected, never a default.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use tonlib_core::TonAddress;
use tonlib_core::cell::Cell;

use crate::stack::{StackEntry, from_toncenter};
use crate::{TonError, to_boc};

const MAX_ANSWER: usize = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("TON API {url}: {message}")]
    Transport { url: String, message: String },
    #[error("TON API {url} refused the request (HTTP {status}, code {code}): {error}")]
    Api { url: String, status: u16, code: i64, error: String },
    #[error("TON API {url}: unexpected answer: {message}")]
    Answer { url: String, message: String },
    #[error("get-method {method} on {address} exited with code {exit_code}")]
    GetMethod { address: String, method: String, exit_code: i64 },
    #[error(transparent)]
    Ton(#[from] TonError),
}

/// An account as the chain reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub balance: u64,
    /// `active`, `uninitialized` or `frozen`.
    pub state: String,
    /// The chain's time when it answered (`sync_utime`), when it says.
    pub chain_time: Option<u64>,
}

#[derive(Clone)]
pub struct Toncenter {
    base: String,
    api_key: Option<String>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Toncenter {
    /// `base` is the API root, e.g. `https://toncenter.com/api/v2` or `http://127.0.0.1:8081/api/v2`.
    pub fn new(base: &str, api_key: Option<String>) -> Result<Toncenter, ChainError> {
        let uri: Uri = base.parse().map_err(|e| ChainError::Transport { url: base.into(), message: format!("{e}") })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(ChainError::Transport {
                url: base.into(),
                message: "expected an http:// or https:// URL".into(),
            });
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| ChainError::Transport { url: base.into(), message: e.to_string() })?
            .with_root_certificates(rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Toncenter {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One API call; an answer of HTTP 429 (over the API's quota) is tried
    /// again after 250 ms, 500 ms, 1 s and 2 s before it is an error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ChainError> {
        let mut pause = Duration::from_millis(250);
        loop {
            match self.call_once(method.clone(), path, body.clone()).await {
                Err(ChainError::Api { status: 429, .. }) if pause <= Duration::from_secs(2) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ChainError> {
        let url = format!("{}/{path}", self.base);
        let transport = |message: String| ChainError::Transport { url: url.clone(), message };
        let mut req = Request::builder().method(method).uri(&url).header("accept", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("x-api-key", key);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&v).expect("JSON serialises"))
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| transport(e.to_string()))?;
        let res = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| transport(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(|e| transport(e.to_string()))?;
        let status = res.status().as_u16();
        let bytes = tokio::time::timeout(TIMEOUT, Limited::new(res.into_body(), MAX_ANSWER).collect())
            .await
            .map_err(|_| transport("answer body timed out".into()))?
            .map_err(|e| transport(format!("answer body: {e}")))?
            .to_bytes();
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ChainError::Answer { url: url.clone(), message: format!("HTTP {status}, not JSON: {e}") })?;
        if answer.get("ok") != Some(&Value::Bool(true)) {
            return Err(ChainError::Api {
                url,
                status,
                code: answer.get("code").and_then(Value::as_i64).unwrap_or(status.into()),
                error: answer
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error text")
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        answer.get("result").cloned().ok_or_else(|| ChainError::Answer { url, message: "no `result`".into() })
    }

    /// The local emulated chain's own endpoints (`/local/airdrop`, `/local/advance`,
    /// `/local/fees`), beside its `/api/v2`; toncenter has none of them.
    pub async fn local(&self, path: &str, body: Value) -> Result<Value, ChainError> {
        let root = self.base.strip_suffix("/api/v2").unwrap_or(&self.base).to_owned();
        let local = Toncenter { base: format!("{root}/local"), api_key: None, client: self.client.clone() };
        local.call_once(Method::POST, path, Some(body)).await
    }

    /// Sends an external message (a wallet's signed transfer).
    pub async fn send_boc(&self, message: &Cell) -> Result<(), ChainError> {
        let boc = base64::engine::general_purpose::STANDARD.encode(to_boc(message)?);
        self.call(Method::POST, "sendBoc", Some(json!({ "boc": boc }))).await.map(|_| ())
    }

    /// Runs a get-method; a non-zero exit code is an error.
    pub async fn run_get_method(
        &self,
        address: &TonAddress,
        method: &str,
        stack: Vec<Value>,
    ) -> Result<Vec<StackEntry>, ChainError> {
        let result = self
            .call(
                Method::POST,
                "runGetMethod",
                Some(json!({ "address": address.to_hex(), "method": method, "stack": stack })),
            )
            .await?;
        let exit_code = result.get("exit_code").and_then(Value::as_i64).unwrap_or(-1);
        if exit_code != 0 && exit_code != 1 {
            return Err(ChainError::GetMethod { address: address.to_hex(), method: method.into(), exit_code });
        }
        Ok(from_toncenter(result.get("stack").unwrap_or(&Value::Null))?)
    }

    pub async fn account(&self, address: &TonAddress) -> Result<AccountInfo, ChainError> {
        #[derive(Deserialize)]
        struct Raw {
            balance: Value,
            state: String,
            sync_utime: Option<u64>,
        }
        let path = format!("getAddressInformation?address={}", address.to_hex());
        let value = self.call(Method::GET, &path, None).await?;
        let raw: Raw = serde_json::from_value(value)
            .map_err(|e| ChainError::Answer { url: path.clone(), message: format!("account: {e}") })?;
        Ok(AccountInfo { balance: parse_amount(&raw.balance, &path)?, state: raw.state, chain_time: raw.sync_utime })
    }

    /// A wallet's seqno (0 when it is not deployed yet).
    pub async fn wallet_seqno(&self, address: &TonAddress) -> Result<u32, ChainError> {
        let path = format!("getWalletInformation?address={}", address.to_hex());
        let value = self.call(Method::GET, &path, None).await?;
        let seqno = value.get("seqno").and_then(Value::as_u64).unwrap_or(0);
        u32::try_from(seqno).map_err(|_| ChainError::Answer { url: path, message: format!("seqno {seqno}") })
    }
}

/// Asks `check` until it finds what it waits for, backing off from 50 ms to
/// 2 s between asks; after `within`, an error saying `what` was not seen.
pub async fn poll<T, Fut>(
    chain: &Toncenter,
    within: Duration,
    what: impl FnOnce() -> String,
    mut check: impl FnMut() -> Fut,
) -> Result<T, ChainError>
where
    Fut: std::future::Future<Output = Result<Option<T>, ChainError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ChainError::Transport {
                url: chain.base().into(),
                message: format!("{} not seen on chain within {} s", what(), within.as_secs()),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

fn parse_amount(v: &Value, url: &str) -> Result<u64, ChainError> {
    let parsed = match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    parsed.ok_or_else(|| ChainError::Answer { url: url.into(), message: format!("balance {v} is not nanoTON") })
}
