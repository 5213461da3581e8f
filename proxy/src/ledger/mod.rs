//! The ledger: deposits, charges (one per verified receipt), worker credits
//! and commission, client and worker channels, settlements and reputation, in
//! SQLite (WAL, synchronous = FULL).
//!
//! Every write goes through one writer thread, in order: charges are
//! group-committed (every charge waiting at that moment in one transaction)
//! and each caller is answered only after the commit is on disk, so a charge
//! the proxy acknowledged survives a crash; other writes run as one
//! transaction each ([`Ledger::write`]). Reads use a connection of their own.
//! A request hash is charged at most once because it is the primary key of
//! `charges`, not because of a prior look-up.
//!
//! - `charges`: metering, totals and what workers are owed;
//! - `accounts`: balances and operator deposits;
//! - `channels`: clients' channels (vouchers, closes, claims) and the proxy's channels to workers;
//! - `reputation`: workers' records across restarts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;

use cocoon_runtime::LockExt;
use rusqlite::Connection;
use tokio::sync::oneshot;

use cocoon_protocol::NanoTon;

mod accounts;
mod channels;
mod charges;
mod reputation;
#[cfg(test)]
mod tests;

pub use accounts::{Account, AccountRow};
pub use channels::{ClientChannel, WorkerChannel};
pub use charges::{ChargeRecord, Totals, WorkerCreditRow};

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

/// A transaction on the writer's connection whose statements report errors
/// with the ledger's path.
pub(crate) struct Db<'a>(&'a rusqlite::Transaction<'a>, &'a Path);

impl Db<'_> {
    fn execute(&self, statement: &str, params: impl rusqlite::Params) -> Result<usize, LedgerError> {
        self.0.execute(statement, params).map_err(|e| sql(self.1, e))
    }

    fn query_row<T>(
        &self,
        statement: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        self.0.query_row(statement, params, f).map_err(|e| sql(self.1, e))
    }
}

/// A write the writer thread runs: a charge (group-committed), or one transaction.
enum Job {
    Charge { record: Box<ChargeRecord>, done: oneshot::Sender<Result<(), LedgerError>> },
    Write(WriteFn),
}

/// One transaction's worth of writes, run on the writer's connection.
type WriteFn = Box<dyn FnOnce(&mut Connection, &Path) + Send>;

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

    /// Runs `f` as one transaction on the writer's connection, after every
    /// write queued before it; returns once it is committed. It blocks the
    /// calling thread for that long (a commit with synchronous = FULL), as a
    /// write on a shared connection would.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let job = Job::Write(Box::new(move |conn: &mut Connection, path: &Path| {
            let run = || {
                let t = conn.transaction().map_err(|e| sql(path, e))?;
                let out = f(&Db(&t, path))?;
                t.commit().map_err(|e| sql(path, e))?;
                Ok(out)
            };
            let _ = tx.send(run());
        }));
        self.send(job)?;
        rx.recv().map_err(|_| LedgerError::Closed)?
    }

    fn send(&self, job: Job) -> Result<(), LedgerError> {
        let w = self.writer.locked();
        w.as_ref().ok_or(LedgerError::Closed)?.send(job).map_err(|_| LedgerError::Closed)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
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

/// Runs the writes in order; charges that wait together commit together.
fn write_loop(mut conn: Connection, rx: std_mpsc::Receiver<Job>, path: &Path) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let first = match job {
            Job::Write(f) => {
                f(&mut conn, path);
                continue;
            }
            Job::Charge { record, done } => (record, done),
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Job::Charge { record, done }) => group.push((record, done)),
                Ok(write) => {
                    next = Some(write);
                    break;
                }
                Err(_) => break,
            }
        }
        let records: Vec<&ChargeRecord> = group.iter().map(|(r, _)| r.as_ref()).collect();
        match charges::commit_group(&mut conn, &records, path) {
            Ok(results) => {
                for ((_, done), r) in group.into_iter().zip(results) {
                    let _ = done.send(r);
                }
            }
            Err(e) => {
                tracing::error!("ledger commit failed: {e}");
                for (_, done) in group {
                    let _ = done.send(Err(sql(path, clone_err(&e))));
                }
            }
        }
    }
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}
