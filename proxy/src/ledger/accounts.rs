//! Clients' accounts: what they deposited and were charged, and the
//! collateral their open channels give them.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use cocoon_protocol::NanoTon;
use cocoon_runtime::unix_now;

use super::{Ledger, LedgerError, amount, nano};

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

#[derive(Debug, Clone, Serialize)]
pub struct AccountRow {
    pub client_key: String,
    pub deposited: NanoTon,
    pub charged: NanoTon,
    pub balance: i128,
}

impl Ledger {
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

    /// Credits a client's account (the operator's deposit; on-chain deposits later).
    pub fn deposit(&self, client_key: &[u8; 32], value: NanoTon, reference: Option<&str>) -> Result<(), LedgerError> {
        if value.0 == 0 {
            return Err(LedgerError::Amount(0));
        }
        let v = amount(value)?;
        let (key, reference) = (*client_key, reference.map(str::to_owned));
        self.write(move |db| {
            db.execute(
                "INSERT INTO deposits (client_key, amount, reference, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![key.as_slice(), v, reference, unix_now() as i64],
            )?;
            db.execute(
                "INSERT INTO accounts (client_key, deposited) VALUES (?1, ?2)
                 ON CONFLICT (client_key) DO UPDATE SET deposited = deposited + excluded.deposited",
                params![key.as_slice(), v],
            )?;
            Ok(())
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
}
