//! The ledger: deposits, charges (one per verified receipt), worker credits
//! and commission, in SQLite (WAL, synchronous = FULL).
//!
//! Charges are written by one thread that commits every charge waiting at
//! that moment in one transaction (group commit), and answers each caller
//! only after the commit is on disk: a charge the proxy acknowledged survives
//! a crash. A request hash is charged at most once because it is the primary
//! key of `charges`, not because of a prior look-up.

use cocoon_runtime::LockExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

use cocoon_protocol::NanoTon;

/// Charges committed together at most, so one transaction stays short.
const MAX_GROUP: usize = 512;
/// How long a connection waits for another process's lock (the operator's `deposit`).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("request {0} is already charged; a request hash is charged at most once")]
    AlreadyCharged(String),
    #[error("amount {0} nanoTON does not fit the ledger (largest is {max})", max = i64::MAX)]
    Amount(u64),
    #[error("the ledger writer stopped")]
    Closed,
    #[error("channel {channel} belongs to account {account}; a channel credits the account that opened it")]
    ChannelOfAnotherAccount { channel: String, account: String },
}

/// A transaction whose statements report errors with the ledger's path.
struct Db<'a>(&'a rusqlite::Transaction<'a>, &'a Path);

impl Db<'_> {
    fn execute(&self, statement: &str, params: impl rusqlite::Params) -> Result<usize, LedgerError> {
        self.0.execute(statement, params).map_err(|e| sql(self.1, e))
    }
}

/// One verified receipt and what it cost.
#[derive(Debug, Clone)]
pub struct ChargeRecord {
    pub request_hash: [u8; 32],
    pub client_key: [u8; 32],
    pub worker_id: String,
    pub worker_url: String,
    pub payout_address: Option<String>,
    pub model_id: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub worker_cost: NanoTon,
    pub commission: NanoTon,
    pub charge: NanoTon,
    /// The receipt as the worker signed it (COSE_Sign1).
    pub receipt: Vec<u8>,
    pub created_at: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Account {
    pub deposited: NanoTon,
    pub charged: NanoTon,
}

impl Account {
    /// Deposits minus charges; negative while the account uses its credit.
    pub fn balance(&self) -> i128 {
        self.deposited.0 as i128 - self.charged.0 as i128
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub deposits: NanoTon,
    pub charges: u64,
    pub charged: NanoTon,
    pub worker_earnings: NanoTon,
    pub commission: NanoTon,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountRow {
    pub client_key: String,
    pub deposited: NanoTon,
    pub charged: NanoTon,
    pub balance: i128,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerCreditRow {
    pub worker_url: String,
    pub payout_address: Option<String>,
    pub requests: u64,
    pub earned: NanoTon,
}

struct Job {
    record: ChargeRecord,
    done: oneshot::Sender<Result<(), LedgerError>>,
}

pub struct Ledger {
    path: PathBuf,
    writer: Mutex<Option<std_mpsc::Sender<Job>>>,
    reader: Mutex<Connection>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    client_key BLOB PRIMARY KEY CHECK (length(client_key) = 32),
    deposited INTEGER NOT NULL DEFAULT 0 CHECK (deposited >= 0),
    charged INTEGER NOT NULL DEFAULT 0 CHECK (charged >= 0)
);
CREATE TABLE IF NOT EXISTS deposits (
    id INTEGER PRIMARY KEY,
    client_key BLOB NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    reference TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    request_hash BLOB PRIMARY KEY CHECK (length(request_hash) = 32),
    client_key BLOB NOT NULL,
    worker_id TEXT NOT NULL,
    worker_url TEXT NOT NULL,
    payout_address TEXT,
    model_id TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    worker_cost INTEGER NOT NULL CHECK (worker_cost >= 0),
    commission INTEGER NOT NULL CHECK (commission >= 0),
    charge INTEGER NOT NULL CHECK (charge = worker_cost + commission),
    receipt BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_credits (
    worker_url TEXT PRIMARY KEY,
    payout_address TEXT,
    requests INTEGER NOT NULL DEFAULT 0,
    earned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reputation (
    worker_url TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS client_channels (
    address TEXT PRIMARY KEY,
    client_key BLOB NOT NULL CHECK (length(client_key) = 32),
    descriptor TEXT NOT NULL,
    deposit_seen INTEGER NOT NULL DEFAULT 0,
    voucher_total INTEGER NOT NULL DEFAULT 0 CHECK (voucher_total >= 0),
    signature TEXT,
    claimed INTEGER NOT NULL DEFAULT 0 CHECK (claimed >= 0 AND claimed <= voucher_total),
    closing_since INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_channels (
    payee TEXT PRIMARY KEY,
    descriptor TEXT NOT NULL,
    deposited INTEGER NOT NULL DEFAULT 0,
    voucher_total INTEGER NOT NULL DEFAULT 0,
    signature TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('claim', 'fund')),
    amount INTEGER NOT NULL CHECK (amount > 0),
    created_at INTEGER NOT NULL
);
";

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

fn amount(v: NanoTon) -> Result<i64, LedgerError> {
    i64::try_from(v.0).map_err(|_| LedgerError::Amount(v.0))
}

fn nano(v: i64) -> NanoTon {
    NanoTon(v.max(0) as u64)
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let writer_conn = connect(path)?;
        writer_conn.execute_batch(SCHEMA).map_err(|e| sql(path, e))?;
        let reader = connect(path)?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        let p = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || write_loop(writer_conn, rx, &p))
            .map_err(|e| LedgerError::Sqlite {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Ledger {
            path: path.to_path_buf(),
            writer: Mutex::new(Some(tx)),
            reader: Mutex::new(reader),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Records a charge; returns once it is committed to disk.
    pub async fn charge(&self, record: ChargeRecord) -> Result<(), LedgerError> {
        let (done, rx) = oneshot::channel();
        {
            let w = self.writer.locked();
            w.as_ref().ok_or(LedgerError::Closed)?.send(Job { record, done }).map_err(|_| LedgerError::Closed)?;
        }
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// Stops the writer after the charges already queued are committed.
    pub fn close(&self) {
        self.writer.locked().take();
        if let Some(t) = self.thread.locked().take() {
            let _ = t.join();
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, LedgerError> {
        let conn = self.reader.locked();
        f(&conn).map_err(|e| sql(&self.path, e))
    }

    pub fn account(&self, client_key: &[u8; 32]) -> Result<Account, LedgerError> {
        let row = self.read(|c| {
            c.query_row("SELECT deposited, charged FROM accounts WHERE client_key = ?1", [client_key.as_slice()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
        })?;
        Ok(row.map(|(d, c)| Account { deposited: nano(d), charged: nano(c) }).unwrap_or_default())
    }

    /// The account and what its open channels hold on chain beyond their
    /// newest vouchers (as last seen): the most credit the proxy may extend
    /// to it. Channels that are closing count nothing, since the payer takes
    /// the rest back. One query: it runs before every forwarded request.
    pub fn account_and_collateral(&self, client_key: &[u8; 32]) -> Result<(Account, NanoTon), LedgerError> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE((SELECT deposited FROM accounts WHERE client_key = ?1), 0),
                        COALESCE((SELECT charged FROM accounts WHERE client_key = ?1), 0),
                        COALESCE((SELECT SUM(MAX(deposit_seen - voucher_total, 0)) FROM client_channels
                                  WHERE client_key = ?1 AND closing_since = 0), 0)",
                [client_key.as_slice()],
                |r| {
                    let account = Account { deposited: nano(r.get(0)?), charged: nano(r.get(1)?) };
                    Ok((account, nano(r.get(2)?)))
                },
            )
        })
    }

    pub fn is_charged(&self, request_hash: &[u8; 32]) -> Result<bool, LedgerError> {
        self.read(|c| {
            c.query_row("SELECT 1 FROM charges WHERE request_hash = ?1", [request_hash.as_slice()], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
    }

    /// Credits a client's account (the operator's deposit; on-chain deposits later).
    pub fn deposit(&self, client_key: &[u8; 32], value: NanoTon, reference: Option<&str>) -> Result<(), LedgerError> {
        if value.0 == 0 {
            return Err(LedgerError::Amount(0));
        }
        let v = amount(value)?;
        let mut conn = self.reader.locked();
        let tx = conn.transaction().map_err(|e| sql(&self.path, e))?;
        tx.execute(
            "INSERT INTO deposits (client_key, amount, reference, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![client_key.as_slice(), v, reference, unix_now() as i64],
        )
        .map_err(|e| sql(&self.path, e))?;
        tx.execute(
            "INSERT INTO accounts (client_key, deposited) VALUES (?1, ?2)
             ON CONFLICT (client_key) DO UPDATE SET deposited = deposited + excluded.deposited",
            params![client_key.as_slice(), v],
        )
        .map_err(|e| sql(&self.path, e))?;
        tx.commit().map_err(|e| sql(&self.path, e))
    }

    pub fn totals(&self) -> Result<Totals, LedgerError> {
        self.read(|c| {
            let deposits: i64 = c.query_row("SELECT COALESCE(SUM(amount), 0) FROM deposits", [], |r| r.get(0))?;
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(charge), 0), COALESCE(SUM(worker_cost), 0), COALESCE(SUM(commission), 0),
                        COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM charges",
                [],
                |r| {
                    Ok(Totals {
                        deposits: nano(deposits),
                        charges: r.get::<_, i64>(0)? as u64,
                        charged: nano(r.get(1)?),
                        worker_earnings: nano(r.get(2)?),
                        commission: nano(r.get(3)?),
                        prompt_tokens: r.get::<_, i64>(4)? as u64,
                        completion_tokens: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
        })
    }

    pub fn accounts(&self) -> Result<Vec<AccountRow>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT client_key, deposited, charged FROM accounts ORDER BY client_key")?;
            let rows = st.query_map([], |r| {
                let (key, d, ch): (Vec<u8>, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                Ok(AccountRow {
                    client_key: hex::encode(key),
                    deposited: nano(d),
                    charged: nano(ch),
                    balance: d as i128 - ch as i128,
                })
            })?;
            rows.collect()
        })
    }

    pub fn worker_credits(&self) -> Result<Vec<WorkerCreditRow>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT worker_url, payout_address, requests, earned FROM worker_credits ORDER BY worker_url",
            )?;
            let rows = st.query_map([], |r| {
                Ok(WorkerCreditRow {
                    worker_url: r.get(0)?,
                    payout_address: r.get(1)?,
                    requests: r.get::<_, i64>(2)? as u64,
                    earned: nano(r.get(3)?),
                })
            })?;
            rows.collect()
        })
    }

    /// Every charge's receipt with its worker and costs, for audits and tests.
    pub fn charges(&self) -> Result<Vec<ChargeRecord>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT request_hash, client_key, worker_id, worker_url, payout_address, model_id, prompt_tokens,
                        completion_tokens, worker_cost, commission, charge, receipt, created_at FROM charges",
            )?;
            let rows = st.query_map([], |r| {
                let hash: Vec<u8> = r.get(0)?;
                let key: Vec<u8> = r.get(1)?;
                Ok(ChargeRecord {
                    request_hash: hash.try_into().unwrap_or([0; 32]),
                    client_key: key.try_into().unwrap_or([0; 32]),
                    worker_id: r.get(2)?,
                    worker_url: r.get(3)?,
                    payout_address: r.get(4)?,
                    model_id: r.get(5)?,
                    prompt_tokens: r.get::<_, i64>(6)? as u32,
                    completion_tokens: r.get::<_, i64>(7)? as u32,
                    worker_cost: nano(r.get(8)?),
                    commission: nano(r.get(9)?),
                    charge: nano(r.get(10)?),
                    receipt: r.get(11)?,
                    created_at: r.get::<_, i64>(12)? as u64,
                })
            })?;
            rows.collect()
        })
    }

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
        let mut conn = self.reader.locked();
        let tx = conn.transaction().map_err(|e| sql(&self.path, e))?;
        let run = |tx: &rusqlite::Transaction| -> Result<i64, LedgerError> {
            let db = |e| sql(&self.path, e);
            tx.execute(
                "INSERT INTO client_channels (address, client_key, descriptor, deposit_seen, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (address) DO NOTHING",
                params![address, client_key.as_slice(), descriptor, seen, now],
            )
            .map_err(db)?;
            let (key, old): (Vec<u8>, i64) = tx
                .query_row("SELECT client_key, voucher_total FROM client_channels WHERE address = ?1", [address], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db)?;
            if key != client_key.as_slice() {
                return Err(LedgerError::ChannelOfAnotherAccount {
                    channel: address.to_owned(),
                    account: hex::encode(key),
                });
            }
            let tx = Db(tx, &self.path);
            tx.execute(
                "UPDATE client_channels SET deposit_seen = MAX(deposit_seen, ?2), updated_at = ?3 WHERE address = ?1",
                params![address, seen, now],
            )?;
            if t <= old {
                return Ok(0);
            }
            tx.execute(
                "UPDATE client_channels SET voucher_total = ?2, signature = ?3 WHERE address = ?1",
                params![address, t, signature],
            )?;
            let credited = t - old;
            tx.execute(
                "INSERT INTO deposits (client_key, amount, reference, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![client_key.as_slice(), credited, format!("voucher {address} total {t}"), now],
            )?;
            tx.execute(
                "INSERT INTO accounts (client_key, deposited) VALUES (?1, ?2)
                 ON CONFLICT (client_key) DO UPDATE SET deposited = deposited + excluded.deposited",
                params![client_key.as_slice(), credited],
            )?;
            Ok(credited)
        };
        let credited = run(&tx)?;
        tx.commit().map_err(|e| sql(&self.path, e))?;
        Ok(nano(credited))
    }

    /// Records a client's channel's deposit as last seen on chain (it only grows while open).
    pub fn see_deposit(&self, address: &str, deposited: NanoTon) -> Result<(), LedgerError> {
        let d = amount(deposited)?;
        self.read(|c| {
            c.execute(
                "UPDATE client_channels SET deposit_seen = MAX(deposit_seen, ?2), updated_at = ?3 WHERE address = ?1",
                params![address, d, unix_now() as i64],
            )
            .map(|_| ())
        })
    }

    /// Records that a client's channel is closing: it takes no more vouchers.
    pub fn mark_closing(&self, address: &str, closing_since: u64) -> Result<(), LedgerError> {
        self.read(|c| {
            c.execute(
                "UPDATE client_channels SET closing_since = ?2, updated_at = ?3 WHERE address = ?1 AND closing_since = 0",
                params![address, closing_since.min(i64::MAX as u64) as i64, unix_now() as i64],
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
        update: &str,
        channel: &str,
        total: i64,
        kind: &str,
        moved: i64,
    ) -> Result<(), LedgerError> {
        let now = unix_now() as i64;
        let mut conn = self.reader.locked();
        let tx = conn.transaction().map_err(|e| sql(&self.path, e))?;
        tx.execute(update, params![channel, total, now]).map_err(|e| sql(&self.path, e))?;
        if moved > 0 {
            tx.execute(
                "INSERT INTO settlements (channel, kind, amount, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![channel, kind, moved, now],
            )
            .map_err(|e| sql(&self.path, e))?;
        }
        tx.commit().map_err(|e| sql(&self.path, e))
    }

    /// What each payout address has earned and is owed: the worker costs of
    /// the charges its clients have paid for. A client's charges are paid in
    /// the order they were made, by everything credited to its account
    /// (operator deposits and vouchers, both money the proxy holds or can
    /// claim); a charge the account's credits do not yet cover pays its
    /// worker nothing until they do. So the proxy never pays a worker out of
    /// credit nobody backs, and a worker colluding with clients that never
    /// pay earns nothing from them.
    pub fn earnings_by_payout(&self) -> Result<Vec<(String, NanoTon)>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare(
                "WITH running AS (
                     SELECT ch.payout_address, ch.worker_cost, a.deposited,
                            SUM(ch.charge) OVER (PARTITION BY ch.client_key ORDER BY ch.rowid) AS paid_through
                     FROM charges ch JOIN accounts a ON a.client_key = ch.client_key)
                 SELECT payout_address, SUM(worker_cost) FROM running
                 WHERE payout_address IS NOT NULL AND paid_through <= deposited
                 GROUP BY payout_address ORDER BY payout_address",
            )?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, nano(r.get(1)?))))?;
            rows.collect()
        })
    }

    /// What each payout address has earned over every charge, paid for or not.
    pub fn earnings_by_payout_charged(&self) -> Result<Vec<(String, NanoTon)>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT payout_address, SUM(worker_cost) FROM charges WHERE payout_address IS NOT NULL
                 GROUP BY payout_address ORDER BY payout_address",
            )?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, nano(r.get(1)?))))?;
            rows.collect()
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
        self.read(|c| {
            c.execute(
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
        self.read(|c| {
            c.execute(
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
        let t = amount(total)?;
        self.read(|c| {
            c.execute(
                "UPDATE worker_channels SET voucher_total = ?2, signature = ?3, updated_at = ?4
                 WHERE payee = ?1 AND voucher_total < ?2",
                params![payee, t, signature, unix_now() as i64],
            )
            .map(|_| ())
        })
    }

    pub fn save_reputation(&self, records: &[(String, String)]) -> Result<(), LedgerError> {
        let mut conn = self.reader.locked();
        let tx = conn.transaction().map_err(|e| sql(&self.path, e))?;
        for (url, json) in records {
            tx.execute(
                "INSERT INTO reputation (worker_url, record) VALUES (?1, ?2)
                 ON CONFLICT (worker_url) DO UPDATE SET record = excluded.record",
                params![url, json],
            )
            .map_err(|e| sql(&self.path, e))?;
        }
        tx.commit().map_err(|e| sql(&self.path, e))
    }

    pub fn load_reputation(&self, worker_url: &str) -> Result<Option<String>, LedgerError> {
        self.read(|c| {
            c.query_row("SELECT record FROM reputation WHERE worker_url = ?1", [worker_url], |r| r.get(0)).optional()
        })
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
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

fn sql(path: &Path, source: rusqlite::Error) -> LedgerError {
    LedgerError::Sqlite { path: path.display().to_string(), source }
}

fn connect(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(|e| sql(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| sql(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| sql(path, e))?;
    // FULL: a commit is on disk before the proxy acknowledges the charge.
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| sql(path, e))?;
    Ok(conn)
}

use cocoon_runtime::unix_now;

fn write_loop(mut conn: Connection, rx: std_mpsc::Receiver<Job>, path: &Path) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &group, path);
        match results {
            Ok(results) => {
                for (job, r) in group.into_iter().zip(results) {
                    let _ = job.done.send(r);
                }
            }
            Err(e) => {
                tracing::error!("ledger commit failed: {e}");
                for job in group {
                    let _ = job.done.send(Err(sql(path, clone_err(&e))));
                }
            }
        }
    }
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

/// One transaction for the whole group; each charge in its own savepoint, so
/// that a duplicate refuses that charge alone.
fn commit_group(conn: &mut Connection, group: &[Job], path: &Path) -> rusqlite::Result<Vec<Result<(), LedgerError>>> {
    let mut tx = conn.transaction()?;
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let mut sp = tx.savepoint()?;
        match insert_charge(&sp, &job.record, path) {
            Ok(()) => {
                sp.commit()?;
                results.push(Ok(()));
            }
            Err(e) => {
                sp.rollback()?;
                drop(sp);
                results.push(Err(e));
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

fn insert_charge(conn: &Connection, r: &ChargeRecord, path: &Path) -> Result<(), LedgerError> {
    let (cost, commission, charge) = (amount(r.worker_cost)?, amount(r.commission)?, amount(r.charge)?);
    let inserted = conn.execute(
        "INSERT INTO charges (request_hash, client_key, worker_id, worker_url, payout_address, model_id, prompt_tokens,
                              completion_tokens, worker_cost, commission, charge, receipt, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (request_hash) DO NOTHING",
        params![
            r.request_hash.as_slice(),
            r.client_key.as_slice(),
            r.worker_id,
            r.worker_url,
            r.payout_address,
            r.model_id,
            r.prompt_tokens,
            r.completion_tokens,
            cost,
            commission,
            charge,
            r.receipt,
            r.created_at as i64,
        ],
    );
    let err = |e| sql(path, e);
    if inserted.map_err(err)? == 0 {
        return Err(LedgerError::AlreadyCharged(hex::encode(r.request_hash)));
    }
    conn.execute(
        "INSERT INTO accounts (client_key, charged) VALUES (?1, ?2)
         ON CONFLICT (client_key) DO UPDATE SET charged = charged + excluded.charged",
        params![r.client_key.as_slice(), charge],
    )
    .map_err(err)?;
    conn.execute(
        "INSERT INTO worker_credits (worker_url, payout_address, requests, earned) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (worker_url) DO UPDATE SET requests = requests + 1, earned = earned + excluded.earned,
                                                payout_address = excluded.payout_address",
        params![r.worker_url, r.payout_address, cost],
    )
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: u8, cost: u64) -> ChargeRecord {
        ChargeRecord {
            request_hash: [hash; 32],
            client_key: [9; 32],
            worker_id: "w".into(),
            worker_url: "http://w".into(),
            payout_address: None,
            model_id: "m".into(),
            prompt_tokens: 3,
            completion_tokens: 4,
            worker_cost: NanoTon(cost),
            commission: NanoTon(cost / 10),
            charge: NanoTon(cost + cost / 10),
            receipt: vec![1, 2, 3],
            created_at: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn charges_group_commit_once_each_and_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("cocoon-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.sqlite");
        {
            let ledger = std::sync::Arc::new(Ledger::open(&path).unwrap());
            ledger.deposit(&[9; 32], NanoTon(1_000_000), Some("test")).unwrap();
            let mut tasks = Vec::new();
            for i in 0..200u8 {
                let l = ledger.clone();
                tasks.push(tokio::spawn(async move { l.charge(record(i, 100)).await }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let dup = ledger.charge(record(7, 100)).await.unwrap_err();
            assert!(matches!(dup, LedgerError::AlreadyCharged(_)), "{dup}");
            assert!(ledger.is_charged(&[7; 32]).unwrap());
        }
        let ledger = Ledger::open(&path).unwrap();
        let t = ledger.totals().unwrap();
        assert_eq!(
            (t.charges, t.charged, t.worker_earnings, t.commission),
            (200, NanoTon(22_000), NanoTon(20_000), NanoTon(2_000))
        );
        let a = ledger.account(&[9; 32]).unwrap();
        assert_eq!(a, Account { deposited: NanoTon(1_000_000), charged: NanoTon(22_000) });
        assert_eq!(ledger.worker_credits().unwrap()[0].requests, 200);
        assert!(matches!(ledger.deposit(&[9; 32], NanoTon(u64::MAX), None), Err(LedgerError::Amount(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_earn_only_what_their_clients_paid_for_in_order() {
        let dir = std::env::temp_dir().join(format!("cocoon-ledger-paid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = Ledger::open(&dir.join("ledger.sqlite")).unwrap();
        let charge = |hash: u8, client: u8, payout: &str, cost: u64| ChargeRecord {
            client_key: [client; 32],
            payout_address: Some(payout.into()),
            ..record(hash, cost)
        };
        // Client 1 paid 330 (three charges of 110); client 2 paid nothing.
        ledger.deposit(&[1; 32], NanoTon(330), None).unwrap();
        for (h, payout) in [(1, "A"), (2, "B"), (3, "A"), (4, "A")] {
            ledger.charge(charge(h, 1, payout, 100)).await.unwrap();
        }
        for h in 10..30 {
            ledger.charge(charge(h, 2, "B", 100)).await.unwrap();
        }
        let earned = ledger.earnings_by_payout().unwrap();
        assert_eq!(earned, vec![("A".into(), NanoTon(200)), ("B".into(), NanoTon(100))], "only covered charges pay");
        assert_eq!(
            ledger.earnings_by_payout_charged().unwrap(),
            vec![("A".into(), NanoTon(300)), ("B".into(), NanoTon(2100))]
        );
        // Client 2 pays for 10 charges: B earns those, and earlier earnings never shrink.
        ledger.deposit(&[2; 32], NanoTon(1100), None).unwrap();
        let earned = ledger.earnings_by_payout().unwrap();
        assert_eq!(earned, vec![("A".into(), NanoTon(200)), ("B".into(), NanoTon(1100))]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn vouchers_credit_what_they_add_once_and_never_less() {
        let dir = std::env::temp_dir().join(format!("cocoon-ledger-vouchers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = Ledger::open(&dir.join("ledger.sqlite")).unwrap();
        let key = [5u8; 32];
        let credit =
            |total: u64| ledger.credit_voucher("0:aa", &key, "{}", NanoTon(1000), NanoTon(total), "sig").unwrap();
        assert_eq!(credit(100), NanoTon(100));
        assert_eq!(credit(250), NanoTon(150));
        assert_eq!(credit(250), NanoTon(0), "the same voucher again credits nothing");
        assert_eq!(credit(200), NanoTon(0), "an older voucher credits nothing");
        assert_eq!(ledger.account(&key).unwrap().deposited, NanoTon(250));
        let ch = ledger.client_channel("0:aa").unwrap().unwrap();
        assert_eq!((ch.voucher_total, ch.claimed, ch.deposit_seen), (NanoTon(250), NanoTon(0), NanoTon(1000)));
        // The channel is bound to its first account.
        assert!(ledger.credit_voucher("0:aa", &[6; 32], "{}", NanoTon(1000), NanoTon(300), "sig").is_err());
        assert_eq!(ledger.account(&[6; 32]).unwrap().deposited, NanoTon(0));
        // Claims: never above the newest voucher (the schema refuses it), never backwards.
        ledger.record_claim("0:aa", NanoTon(250), NanoTon(250)).unwrap();
        ledger.record_claim("0:aa", NanoTon(100), NanoTon(0)).unwrap();
        assert_eq!(ledger.client_channel("0:aa").unwrap().unwrap().claimed, NanoTon(250));
        assert!(ledger.record_claim("0:aa", NanoTon(251), NanoTon(1)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
