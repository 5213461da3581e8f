//! The client runner pays its proxy through a payment channel: after each
//! answer whose receipt and charge it verified, it adds exactly that charge
//! (the attested prices plus the proxy's stated commission) to its running
//! total, records the total durably, and sends the proxy a voucher signed
//! for it. The proxy credits the account with what each voucher adds.
//!
//! The total is written (and synced) before the voucher is signed, so a
//! runner that restarts never signs less than it already promised, and never
//! more than it verified.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use cocoon_protocol::NanoTon;
use cocoon_protocol::proxy_api::{ApiError, VoucherAccepted};
use cocoon_ton::channel::{ChannelBinding, ChannelDescriptor, ChannelParams};
use cocoon_ton::{TonAddress, Voucher};

use crate::ClientError;
use crate::http::{HttpClient, HttpError, join};

pub struct ChannelPayer {
    params: ChannelParams,
    descriptor: ChannelDescriptor,
    channel: TonAddress,
    /// The network and channel instance every voucher names.
    binding: ChannelBinding,
    state_path: PathBuf,
    paid: Mutex<u64>,
}

impl ChannelPayer {
    /// Loads the channel file and the total paid so far (`<file>.paid`); checks
    /// that the channel is this key's and pays the proxy's wallet.
    pub fn open(path: &Path, key: &SigningKey, proxy_account: &[u8; 32]) -> Result<ChannelPayer, ClientError> {
        let bad = |reason: String| ClientError::ChannelFile { path: path.display().to_string(), reason };
        let (params, descriptor) = crate::channel_file::load_channel(path).map_err(|e| bad(format!("{e:#}")))?;
        if params.payer_key != key.verifying_key().to_bytes() {
            return Err(bad("its payer key is not this client's key".into()));
        }
        let proxy_wallet = cocoon_ton::wallet::address_of(proxy_account).map_err(|e| bad(e.to_string()))?;
        if params.payee != proxy_wallet {
            return Err(bad(format!(
                "it pays {}, but the proxy's wallet (of its attested account key) is {proxy_wallet}",
                params.payee
            )));
        }
        let state_path = PathBuf::from(format!("{}.paid", path.display()));
        let paid = match std::fs::read(&state_path) {
            Ok(bytes) => {
                let v: Value =
                    serde_json::from_slice(&bytes).map_err(|e| bad(format!("{}: {e}", state_path.display())))?;
                v["total"].as_u64().ok_or_else(|| bad(format!("{}: no total", state_path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(bad(format!("{}: {e}", state_path.display()))),
        };
        let channel = params.address().map_err(|e| bad(e.to_string()))?;
        let binding = descriptor.binding().map_err(|e| bad(e.to_string()))?;
        Ok(ChannelPayer { params, descriptor, channel, binding, state_path, paid: Mutex::new(paid) })
    }

    pub fn params(&self) -> &ChannelParams {
        &self.params
    }

    pub async fn paid(&self) -> u64 {
        *self.paid.lock().await
    }

    /// Shows the proxy the channel and the newest voucher (0 before the first
    /// answer), so that it reads the channel's deposit on chain: the proxy
    /// extends credit only against a deposit it has seen.
    pub async fn register(&self, key: &SigningKey, http: &HttpClient, proxy: &str) -> Result<(), ClientError> {
        let total = *self.paid.lock().await;
        let voucher = (Voucher { channel: self.channel.clone(), binding: self.binding, total }).sign(key)?;
        let body = json!({ "channel": self.descriptor, "voucher": voucher }).to_string();
        post(http, proxy, body).await.map(|_| ())
    }

    /// Adds `charge` to the total, records it, and sends the proxy the voucher.
    pub async fn pay(&self, charge: NanoTon, key: &SigningKey, http: &HttpClient, proxy: &str) {
        if charge.0 == 0 {
            return;
        }
        let voucher = {
            let mut paid = self.paid.lock().await;
            let total = paid.saturating_add(charge.0);
            // Remember the promise before making it.
            if let Err(e) = crate::durable::write(&self.state_path, json!({ "total": total }).to_string().as_bytes()) {
                warn!("not paying: cannot record the total paid in {}: {e}", self.state_path.display());
                return;
            }
            *paid = total;
            match (Voucher { channel: self.channel.clone(), binding: self.binding, total }).sign(key) {
                Ok(v) => v,
                Err(e) => {
                    warn!("signing a voucher: {e}");
                    return;
                }
            }
        };
        let body = json!({ "channel": self.descriptor, "voucher": voucher }).to_string();
        match post(http, proxy, body).await {
            Ok(v) => debug!(total = voucher.total, credited = v.credited.0, "voucher accepted"),
            // The next voucher carries this one's amount too.
            Err(e) => warn!(total = voucher.total, "the proxy did not take the voucher: {e}"),
        }
    }
}

async fn post(http: &HttpClient, proxy: &str, body: String) -> Result<VoucherAccepted, ClientError> {
    let uri = join(proxy, "/v1/vouchers")?;
    let at = uri.to_string();
    let req = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request parts");
    let resp = http.send(req).await?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 16 << 10)
        .collect()
        .await
        .map_err(|e| HttpError::Body { uri: at, detail: e.to_string() })?
        .to_bytes();
    if !status.is_success() {
        return Err(match ApiError::parse(&bytes) {
            Some(e) => ClientError::Api { status: status.as_u16(), code: e.error.code, message: e.error.message },
            None => ClientError::Status {
                what: "the proxy's voucher endpoint",
                status: status.as_u16(),
                body: String::new(),
            },
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Answer { what: "the proxy's answer to a voucher", reason: e.to_string() })
}
