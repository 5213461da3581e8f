//! A TON wallet (v4R2, as tonlib-core builds it) that sends the channel and
//! registry messages: from an Ed25519 seed (a 0600 key file) or a 24-word TON
//! mnemonic.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use num_bigint::BigUint;
use tonlib_core::TonAddress;
use tonlib_core::cell::Cell;
use tonlib_core::message::{CommonMsgInfo, TonMessage, TransferMessage};
use tonlib_core::wallet::mnemonic::{KeyPair, Mnemonic};
use tonlib_core::wallet::ton_wallet::TonWallet;
use tonlib_core::wallet::wallet_version::WalletVersion;

use crate::TonError;
use crate::toncenter::{ChainError, Toncenter, poll};

/// How long a signed transfer stays valid, and how long we wait for it to land.
const VALIDITY: Duration = Duration::from_secs(120);

/// One message a wallet transfer carries.
pub struct Outgoing {
    pub dest: TonAddress,
    pub value: u64,
    pub bounce: bool,
    pub body: Cell,
    pub state_init: Option<Cell>,
}

/// The address of the v4R2 wallet of an Ed25519 public key: how a client finds
/// its proxy's wallet from the account key the proxy's evidence binds.
pub fn address_of(public_key: &[u8; 32]) -> Result<TonAddress, TonError> {
    // Only the public key goes into the wallet's data; the secret is not used.
    let pair = KeyPair { public_key: public_key.to_vec(), secret_key: vec![0; 64] };
    Ok(TonWallet::new(WalletVersion::V4R2, pair)?.address)
}

pub struct Wallet {
    inner: TonWallet,
    signing: SigningKey,
}

impl Wallet {
    pub fn from_seed(seed: &[u8; 32]) -> Result<Wallet, TonError> {
        let signing = SigningKey::from_bytes(seed);
        let public = signing.verifying_key().to_bytes().to_vec();
        let mut secret = seed.to_vec();
        secret.extend_from_slice(&public);
        Self::from_key_pair(KeyPair { public_key: public, secret_key: secret }, signing)
    }

    /// A TON mnemonic (24 words, no password), as TON wallets show it.
    pub fn from_mnemonic(words: &str) -> Result<Wallet, TonError> {
        let bad =
            |e: String| TonError::Unexpected { what: "TON mnemonic", expected: "24 valid words".into(), found: e };
        let mnemonic = Mnemonic::from_str(words.trim(), &None).map_err(|e| bad(e.to_string()))?;
        let pair = mnemonic.to_key_pair().map_err(|e| bad(e.to_string()))?;
        let seed: [u8; 32] = pair.secret_key[..32].try_into().map_err(|_| bad("a short secret key".into()))?;
        Self::from_key_pair(pair, SigningKey::from_bytes(&seed))
    }

    fn from_key_pair(pair: KeyPair, signing: SigningKey) -> Result<Wallet, TonError> {
        Ok(Wallet { inner: TonWallet::new(WalletVersion::V4R2, pair)?, signing })
    }

    pub fn address(&self) -> &TonAddress {
        &self.inner.address
    }

    /// The wallet's key, which also signs vouchers when this wallet pays a channel.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Signs and sends one transfer, then waits until the wallet's seqno moves
    /// (the transfer was applied). Deploys the wallet with its first transfer.
    pub async fn send(&self, chain: &Toncenter, messages: Vec<Outgoing>) -> Result<(), ChainError> {
        let account = chain.account(self.address()).await?;
        let needed: u64 = messages.iter().map(|m| m.value).sum();
        if account.balance < needed {
            return Err(ChainError::Ton(TonError::Unexpected {
                what: "wallet balance",
                expected: format!("at least {needed} nanoTON for this transfer plus fees"),
                found: format!("{} nanoTON at {}", account.balance, self.address()),
            }));
        }
        let deployed = account.state == "active";
        let seqno = if deployed { chain.wallet_seqno(self.address()).await? } else { 0 };
        let cells = messages.into_iter().map(|m| internal(m).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        // Validity by the chain's clock where it tells it: a wallet refuses an expired transfer.
        let now = account.chain_time.unwrap_or_else(cocoon_runtime::unix_now);
        let expire_at = (now + VALIDITY.as_secs()) as u32;
        let external = self.inner.create_external_msg(expire_at, seqno, !deployed, cells).map_err(|e| {
            TonError::Unexpected { what: "wallet transfer", expected: "a message".into(), found: e.to_string() }
        })?;
        chain.send_boc(&external).await?;
        let described = || format!("transfer with seqno {seqno} from {}", self.address());
        poll(chain, VALIDITY, described, || async {
            Ok((chain.wallet_seqno(self.address()).await? > seqno).then_some(()))
        })
        .await
    }
}

fn internal(m: Outgoing) -> Result<Cell, TonError> {
    let mut info = CommonMsgInfo::new_default_internal(&m.dest, &BigUint::from(m.value));
    if let CommonMsgInfo::InternalMessage(i) = &mut info {
        i.bounce = m.bounce;
        i.bounced = false;
        i.ihr_disabled = true;
    }
    let mut msg = TransferMessage::new(info, Arc::new(m.body));
    if let Some(init) = m.state_init {
        msg.with_state_init(init);
    }
    msg.build().map_err(|e| TonError::Unexpected {
        what: "internal message",
        expected: "a message".into(),
        found: e.to_string(),
    })
}
