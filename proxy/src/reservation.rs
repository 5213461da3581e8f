//! Reservations: what a client's requests in flight may still cost, held
//! against its account until each answer is metered, so that one account's
//! concurrent requests cannot together spend more than it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cocoon_protocol::NanoTon;
use cocoon_runtime::LockExt;

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("the ledger is unavailable")]
    LedgerUnavailable,
    #[error(
        "the request may cost up to {max_cost} but the account {account} has {available} nanoTON available \
         (balance {balance} + credit {} secured by its open channels - {pending} reserved by requests in flight); \
         deposit more, open or top up a payment channel, or state a lower maximum cost", credit.0
    )]
    InsufficientFunds {
        max_cost: NanoTon,
        account: String,
        available: i128,
        balance: i128,
        credit: NanoTon,
        pending: u64,
    },
}

/// The amounts reserved by each account's requests in flight.
#[derive(Default)]
pub struct Reservations {
    pub(crate) pending: Mutex<HashMap<[u8; 32], u64>>,
}

impl Reservations {
    /// Reserves `amount` for `key` when `available` (what the account can
    /// spend, before its requests in flight) covers it with what is pending;
    /// the pending amount in the refusal.
    pub fn reserve(self: &Arc<Self>, key: [u8; 32], amount: NanoTon, available: i128) -> Result<Reservation, u64> {
        let mut pending = self.pending.locked();
        let held = pending.get(&key).copied().unwrap_or(0);
        if amount.0 as i128 > available - held as i128 {
            return Err(held);
        }
        *pending.entry(key).or_insert(0) += amount.0;
        Ok(Reservation { owner: self.clone(), key, amount: amount.0 })
    }

    /// Accounts with something reserved now.
    pub fn accounts(&self) -> usize {
        self.pending.locked().len()
    }
}

/// A client's reservation of its maximum cost; released when dropped.
pub struct Reservation {
    owner: Arc<Reservations>,
    key: [u8; 32],
    amount: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.owner.pending.locked();
        if let Some(v) = r.get_mut(&self.key) {
            *v = v.saturating_sub(self.amount);
            if *v == 0 {
                r.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_per_account_and_are_released_on_drop() {
        let r = Arc::new(Reservations::default());
        let a = r.reserve([1; 32], NanoTon(60), 100).unwrap();
        assert_eq!(r.reserve([1; 32], NanoTon(50), 100).err(), Some(60), "60 of 100 is held");
        let b = r.reserve([1; 32], NanoTon(40), 100).unwrap();
        let _other = r.reserve([2; 32], NanoTon(100), 100).unwrap();
        drop(a);
        assert!(r.reserve([1; 32], NanoTon(60), 100).is_ok());
        drop(b);
        assert_eq!(r.accounts(), 1, "released reservations leave no entry");
    }
}
