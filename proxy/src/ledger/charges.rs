//! Charges: one per verified receipt, group-committed; the totals, and what
//! each worker is owed.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

use cocoon_protocol::NanoTon;

use super::{Job, Ledger, LedgerError, amount, nano, sql};

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
pub struct WorkerCreditRow {
    pub worker_url: String,
    pub payout_address: Option<String>,
    pub requests: u64,
    pub earned: NanoTon,
}

impl Ledger {
    /// Records a charge; returns once it is committed to disk.
    pub async fn charge(&self, record: ChargeRecord) -> Result<(), LedgerError> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Charge { record: Box::new(record), done })?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    pub fn is_charged(&self, request_hash: &[u8; 32]) -> Result<bool, LedgerError> {
        self.read(|c| {
            c.query_row("SELECT 1 FROM charges WHERE request_hash = ?1", [request_hash.as_slice()], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
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
}

/// One transaction for the whole group; each charge in its own savepoint, so
/// that a duplicate refuses that charge alone.
pub(super) fn commit_group(
    conn: &mut Connection,
    group: &[&ChargeRecord],
    path: &Path,
) -> rusqlite::Result<Vec<Result<(), LedgerError>>> {
    let mut tx = conn.transaction()?;
    let mut results = Vec::with_capacity(group.len());
    for record in group {
        let mut sp = tx.savepoint()?;
        match insert_charge(&sp, record, path) {
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
