//! Clients' channels to this proxy (vouchers credited, closes seen, claims
//! made) and the proxy's channels to workers (funding, vouchers signed).

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use cocoon_protocol::NanoTon;
use cocoon_runtime::unix_now;

use super::{Ledger, LedgerError, amount, nano};

/// A client's channel to this proxy, as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientChannel {
    pub address: String,
    pub client_key: String,
    /// The channel's descriptor (JSON), as the client sent it.
    pub descriptor: String,
    /// The deposit last seen on chain.
    pub deposit_seen: NanoTon,
    /// The newest voucher's total and its signature.
    pub voucher_total: NanoTon,
    pub signature: Option<String>,
    /// What the proxy has claimed on chain.
    pub claimed: NanoTon,
    /// When the payer asked to close, as last seen on chain; 0 while open.
    pub closing_since: u64,
}

/// The proxy's channel to one worker's payout address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerChannel {
    pub payee: String,
    pub descriptor: String,
    pub deposited: NanoTon,
    pub voucher_total: NanoTon,
    pub signature: Option<String>,
}

fn client_channel_row(r: &rusqlite::Row) -> rusqlite::Result<ClientChannel> {
    Ok(ClientChannel {
        address: r.get(0)?,
        client_key: hex::encode(r.get::<_, Vec<u8>>(1)?),
        descriptor: r.get(2)?,
        deposit_seen: nano(r.get(3)?),
        voucher_total: nano(r.get(4)?),
        signature: r.get(5)?,
        claimed: nano(r.get(6)?),
        closing_since: r.get::<_, i64>(7)?.max(0) as u64,
    })
}

impl Ledger {
    pub fn client_channel(&self, address: &str) -> Result<Option<ClientChannel>, LedgerError> {
        self.read(|c| {
            c.query_row(
                "SELECT address, client_key, descriptor, deposit_seen, voucher_total, signature, claimed, closing_since
                 FROM client_channels WHERE address = ?1",
                [address],
                client_channel_row,
            )
            .optional()
        })
    }

    pub fn client_channels(&self) -> Result<Vec<ClientChannel>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT address, client_key, descriptor, deposit_seen, voucher_total, signature, claimed, closing_since
                 FROM client_channels ORDER BY address",
            )?;
            let rows = st.query_map([], client_channel_row)?;
            rows.collect()
        })
    }

    /// Records a client's voucher for `total` and credits its account with what
    /// the voucher adds to the newest one before; returns that amount (0 for a
    /// voucher that is not newer). One transaction: the credit and the voucher
    /// that earns it are written together or not at all.
    pub fn credit_voucher(
        &self,
        address: &str,
        client_key: &[u8; 32],
        descriptor: &str,
        deposit_seen: NanoTon,
        total: NanoTon,
        signature: &str,
    ) -> Result<NanoTon, LedgerError> {
        let (t, seen) = (amount(total)?, amount(deposit_seen)?);
        let now = unix_now() as i64;
        let (address, key, descriptor, signature) =
            (address.to_owned(), *client_key, descriptor.to_owned(), signature.to_owned());
        let credited = self.write(move |db| {
            db.execute(
                "INSERT INTO client_channels (address, client_key, descriptor, deposit_seen, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (address) DO NOTHING",
                params![address, key.as_slice(), descriptor, seen, now],
            )?;
            let (owner, old): (Vec<u8>, i64) = db.query_row(
                "SELECT client_key, voucher_total FROM client_channels WHERE address = ?1",
                [&address],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if owner != key.as_slice() {
                return Err(LedgerError::ChannelOfAnotherAccount { channel: address, account: hex::encode(owner) });
            }
            db.execute(
                "UPDATE client_channels SET deposit_seen = MAX(deposit_seen, ?2), updated_at = ?3 WHERE address = ?1",
                params![address, seen, now],
            )?;
            if t <= old {
                return Ok(0);
            }
            db.execute(
                "UPDATE client_channels SET voucher_total = ?2, signature = ?3 WHERE address = ?1",
                params![address, t, signature],
            )?;
            let credited = t - old;
            db.execute(
                "INSERT INTO deposits (client_key, amount, reference, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![key.as_slice(), credited, format!("voucher {address} total {t}"), now],
            )?;
            db.execute(
                "INSERT INTO accounts (client_key, deposited) VALUES (?1, ?2)
                 ON CONFLICT (client_key) DO UPDATE SET deposited = deposited + excluded.deposited",
                params![key.as_slice(), credited],
            )?;
            Ok(credited)
        })?;
        Ok(nano(credited))
    }

    /// Records a client's channel's deposit as last seen on chain (it only grows while open).
    pub fn see_deposit(&self, address: &str, deposited: NanoTon) -> Result<(), LedgerError> {
        let (address, d) = (address.to_owned(), amount(deposited)?);
        self.write(move |db| {
            db.execute(
                "UPDATE client_channels SET deposit_seen = MAX(deposit_seen, ?2), updated_at = ?3 WHERE address = ?1",
                params![address, d, unix_now() as i64],
            )
            .map(|_| ())
        })
    }

    /// Records that a client's channel is closing: it takes no more vouchers.
    pub fn mark_closing(&self, address: &str, closing_since: u64) -> Result<(), LedgerError> {
        let (address, since) = (address.to_owned(), closing_since.min(i64::MAX as u64) as i64);
        self.write(move |db| {
            db.execute(
                "UPDATE client_channels SET closing_since = ?2, updated_at = ?3 WHERE address = ?1 AND closing_since = 0",
                params![address, since, unix_now() as i64],
            )
            .map(|_| ())
        })
    }

    /// Records a claim the proxy made on a client's channel (`claimed` in all, `paid` by this claim).
    pub fn record_claim(&self, address: &str, claimed: NanoTon, paid: NanoTon) -> Result<(), LedgerError> {
        self.record_settlement(
            "UPDATE client_channels SET claimed = MAX(claimed, ?2), updated_at = ?3 WHERE address = ?1",
            address,
            amount(claimed)?,
            "claim",
            amount(paid)?,
        )
    }

    /// One transaction: `update` (?1 the channel, ?2 its new total, ?3 now)
    /// and, when `moved` is not 0, the settlement row that records the money moved.
    fn record_settlement(
        &self,
        update: &'static str,
        channel: &str,
        total: i64,
        kind: &'static str,
        moved: i64,
    ) -> Result<(), LedgerError> {
        let channel = channel.to_owned();
        self.write(move |db| {
            let now = unix_now() as i64;
            db.execute(update, params![channel, total, now])?;
            if moved > 0 {
                db.execute(
                    "INSERT INTO settlements (channel, kind, amount, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![channel, kind, moved, now],
                )?;
            }
            Ok(())
        })
    }

    pub fn worker_channel(&self, payee: &str) -> Result<Option<WorkerChannel>, LedgerError> {
        self.read(|c| {
            c.query_row(
                "SELECT payee, descriptor, deposited, voucher_total, signature FROM worker_channels WHERE payee = ?1",
                [payee],
                |r| {
                    Ok(WorkerChannel {
                        payee: r.get(0)?,
                        descriptor: r.get(1)?,
                        deposited: nano(r.get(2)?),
                        voucher_total: nano(r.get(3)?),
                        signature: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Remembers a channel to a worker before it is funded, so that a crash
    /// between funding and recording cannot make the proxy open a second one.
    pub fn create_worker_channel(&self, payee: &str, descriptor: &str) -> Result<(), LedgerError> {
        let (payee, descriptor) = (payee.to_owned(), descriptor.to_owned());
        self.write(move |db| {
            db.execute(
                "INSERT INTO worker_channels (payee, descriptor, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (payee) DO NOTHING",
                params![payee, descriptor, unix_now() as i64],
            )
            .map(|_| ())
        })
    }

    /// Records the descriptor of a channel to a worker once it is funded (with
    /// the network and instance its vouchers name).
    pub fn bind_worker_channel(&self, payee: &str, descriptor: &str) -> Result<(), LedgerError> {
        let (payee, descriptor) = (payee.to_owned(), descriptor.to_owned());
        self.write(move |db| {
            db.execute(
                "UPDATE worker_channels SET descriptor = ?2, updated_at = ?3 WHERE payee = ?1",
                params![payee, descriptor, unix_now() as i64],
            )
            .map(|_| ())
        })
    }

    /// Records a channel to a worker funded on chain (`deposited` in all, `added` now).
    pub fn record_worker_funding(&self, payee: &str, deposited: NanoTon, added: NanoTon) -> Result<(), LedgerError> {
        self.record_settlement(
            "UPDATE worker_channels SET deposited = MAX(deposited, ?2), updated_at = ?3 WHERE payee = ?1",
            payee,
            amount(deposited)?,
            "fund",
            amount(added)?,
        )
    }

    /// Records the newest voucher signed to a worker (never a smaller one).
    pub fn record_worker_voucher(&self, payee: &str, total: NanoTon, signature: &str) -> Result<(), LedgerError> {
        let (payee, t, signature) = (payee.to_owned(), amount(total)?, signature.to_owned());
        self.write(move |db| {
            db.execute(
                "UPDATE worker_channels SET voucher_total = ?2, signature = ?3, updated_at = ?4
                 WHERE payee = ?1 AND voucher_total < ?2",
                params![payee, t, signature, unix_now() as i64],
            )
            .map(|_| ())
        })
    }
}
