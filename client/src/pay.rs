//! The client runner pays its proxy through a payment channel: after each
//! answer whose receipt and charge it verified, it adds exactly that charge
//! (the attested prices plus the proxy's stated commission) to its running
//! total, records the total durably, and sends the proxy a voucher signed
//! for it. The proxy credits the account with what each voucher adds.
//!
//! The total is written (and synced) before the voucher is signed, so a
//! runner that restarts never signs less than it already promised, and never
//! more than it verified.
//!
//! A runner that uses several proxies pays each through its own channel;
//! with a [`ChannelOpener`] it opens one the first time a request goes to a
//! proxy it has none for, within a budget, and finds it again after a restart.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use cocoon_protocol::NanoTon;
use cocoon_protocol::proxy_api::{ApiError, VoucherAccepted};
use cocoon_ton::channel::{ChannelBinding, ChannelDescriptor, ChannelParams};
use cocoon_ton::toncenter::Toncenter;
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{TonAddress, Voucher};

use crate::ClientError;
use crate::http::{HttpClient, HttpError, join};
use crate::proxies::ProxyLink;

pub struct ChannelPayer {
    params: ChannelParams,
    descriptor: ChannelDescriptor,
    channel: TonAddress,
    /// The network and channel instance every voucher names.
    binding: ChannelBinding,
    path: PathBuf,
    state_path: PathBuf,
    paid: Mutex<u64>,
}

impl ChannelPayer {
    /// Loads the channel file and the total paid so far (`<file>.paid`);
    /// checks that the channel is this key's. Which proxy it pays is the
    /// caller's to check ([`ChannelPayer::params`]).
    pub fn load(path: &Path, key: &SigningKey) -> Result<ChannelPayer, ClientError> {
        let bad = |reason: String| ClientError::ChannelFile { path: path.display().to_string(), reason };
        let (params, descriptor) = crate::channel_file::load_channel(path).map_err(|e| bad(format!("{e:#}")))?;
        if params.payer_key != key.verifying_key().to_bytes() {
            return Err(bad("its payer key is not this client's key".into()));
        }
        let state_path = PathBuf::from(format!("{}.paid", path.display()));
        let paid = read_total(&state_path)?;
        let channel = params.address().map_err(|e| bad(e.to_string()))?;
        let binding = descriptor.binding().map_err(|e| bad(e.to_string()))?;
        Ok(ChannelPayer {
            params,
            descriptor,
            channel,
            binding,
            path: path.to_path_buf(),
            state_path,
            paid: Mutex::new(paid),
        })
    }

    /// The channel file.
    pub fn path(&self) -> &Path {
        &self.path
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

/// Opens a channel to a proxy on the first request that goes to it: from the
/// client's wallet, `deposit` each, while the deposits stay within the
/// budget. The files go to one directory, named by the proxy's account key,
/// so a restarted runner pays through the same channels (and their `.paid`
/// totals) instead of opening new ones; what was deposited is recorded there
/// too (`spent.json`, before each deposit is sent), so the budget holds
/// across restarts.
pub struct ChannelOpener {
    chain: Toncenter,
    wallet: Wallet,
    dir: PathBuf,
    deposit: u64,
    dispute_window: u32,
    /// Held while a channel is opened: one wallet sends one message at a time.
    budget: Mutex<Budget>,
}

struct Budget {
    /// What new channels may still take (nanoTON).
    left: u64,
    /// Proxies the budget left without a channel, said once each.
    refused: std::collections::BTreeSet<[u8; 32]>,
}

impl ChannelOpener {
    /// An opener with `budget` in all, less what earlier runners with the same `dir` deposited.
    pub fn new(
        chain: Toncenter,
        wallet: Wallet,
        dir: PathBuf,
        deposit: u64,
        budget: u64,
        dispute_window: u32,
    ) -> Result<Self, ClientError> {
        let spent = read_total(&dir.join(SPENT_FILE))?;
        Ok(ChannelOpener {
            chain,
            wallet,
            dir,
            deposit,
            dispute_window,
            budget: Mutex::new(Budget { left: budget.saturating_sub(spent), refused: Default::default() }),
        })
    }

    /// The channel file for the proxy with `account`.
    pub fn file_for(&self, account: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("proxy-{}.json", hex::encode(account)))
    }

    /// Makes sure `link` is paid through a channel: the one in its file when
    /// there is one, else a new one, opened now if the budget allows; shows
    /// it to the proxy.
    pub async fn ensure(&self, link: &ProxyLink, key: &SigningKey, http: &HttpClient) -> Result<(), ClientError> {
        if link.payer().is_some() {
            return Ok(());
        }
        let mut budget = self.budget.lock().await;
        if link.payer().is_some() {
            return Ok(());
        }
        let file = self.file_for(link.account());
        if !file.exists() {
            if budget.left < self.deposit {
                let refused = ClientError::ChannelBudget {
                    proxy: link.url().to_string(),
                    deposit: self.deposit,
                    left: budget.left,
                };
                if budget.refused.insert(*link.account()) {
                    warn!("{refused}; the proxy is not used");
                }
                return Err(refused);
            }
            std::fs::create_dir_all(&self.dir).map_err(|e| ClientError::ChannelFile {
                path: self.dir.display().to_string(),
                reason: format!("creating the directory: {e}"),
            })?;
            // Counted before it is sent: a crash after this spends budget, never more than it.
            let spent_file = self.dir.join(SPENT_FILE);
            let spent = read_total(&spent_file)?.saturating_add(self.deposit);
            crate::durable::write(&spent_file, json!({ "total": spent }).to_string().as_bytes()).map_err(|e| {
                ClientError::ChannelFile { path: spent_file.display().to_string(), reason: e.to_string() }
            })?;
            info!(proxy = %link.url(), file = %file.display(), deposit = self.deposit, "opening a channel to the proxy");
            crate::channel_file::open_channel(
                &self.chain,
                &self.wallet,
                link.wallet().clone(),
                self.deposit,
                None,
                self.dispute_window,
                &file,
            )
            .await
            .map_err(|e| ClientError::ChannelOpen { proxy: link.url().to_string(), reason: format!("{e:#}") })?;
            budget.left -= self.deposit;
        }
        link.set_payer(ChannelPayer::load(&file, key)?)?;
        let payer = link.payer().expect("set just now");
        payer.register(key, http, link.url()).await
    }

    /// Loads the channels opened before (by a runner with the same directory)
    /// for the proxies in `links`.
    pub fn load_existing(&self, links: &[std::sync::Arc<ProxyLink>], key: &SigningKey) -> Result<(), ClientError> {
        for link in links {
            let file = self.file_for(link.account());
            if link.payer().is_none() && file.exists() {
                link.set_payer(ChannelPayer::load(&file, key)?)?;
            }
        }
        Ok(())
    }
}

/// Where a [`ChannelOpener`] records what it deposited.
const SPENT_FILE: &str = "spent.json";

/// The `total` in a small JSON file (`.paid`, `spent.json`); 0 when there is none.
fn read_total(path: &Path) -> Result<u64, ClientError> {
    let bad = |reason: String| ClientError::ChannelFile { path: path.display().to_string(), reason };
    match std::fs::read(path) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
            v["total"].as_u64().ok_or_else(|| bad("no total".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(bad(e.to_string())),
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
