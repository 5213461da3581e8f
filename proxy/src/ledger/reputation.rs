//! Workers' reputation records, kept across restarts.

use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError};

impl Ledger {
    pub fn save_reputation(&self, records: &[(String, String)]) -> Result<(), LedgerError> {
        let records = records.to_vec();
        self.write(move |db| {
            for (url, json) in &records {
                db.execute(
                    "INSERT INTO reputation (worker_url, record) VALUES (?1, ?2)
                     ON CONFLICT (worker_url) DO UPDATE SET record = excluded.record",
                    params![url, json],
                )?;
            }
            Ok(())
        })
    }

    pub fn load_reputation(&self, worker_url: &str) -> Result<Option<String>, LedgerError> {
        self.read(|c| {
            c.query_row("SELECT record FROM reputation WHERE worker_url = ?1", [worker_url], |r| r.get(0)).optional()
        })
    }
}
