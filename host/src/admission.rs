//! Who gets a connection and a request slot.
//!
//! Connections are counted in total and per source address. At the total
//! limit a new connection displaces the connection that has been idle (no
//! request in progress) the longest; when none is idle the new one is
//! closed. A request is "in progress" from the moment its headers are read
//! until its response body ends, which is also what the in-flight gauge
//! counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// One client connection, as the admission sees it.
pub struct Conn {
    id: u64,
    pub source: IpAddr,
    requests: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Notified when the connection is displaced.
    pub close: Notify,
}

impl Conn {
    pub fn is_idle(&self) -> bool {
        self.requests.load(Ordering::SeqCst) == 0
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    per_source: HashMap<IpAddr, Source>,
}

#[derive(Default, Clone, Copy)]
struct Source {
    connections: usize,
    in_flight: usize,
}

pub struct Admission {
    max_connections: usize,
    max_connections_per_source: usize,
    max_in_flight_per_source: usize,
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection is busy with a request.
    Full,
    /// This source holds its share of connections.
    SourceConnections,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full => "connections_full",
            Refusal::SourceConnections => "source_connections",
        }
    }
}

/// Held by a connection's task: deregisters on drop.
pub struct ConnGuard {
    admission: Arc<Admission>,
    pub conn: Arc<Conn>,
}

/// Held while a request is in progress (until its response body ends).
pub struct RequestGuard {
    admission: Arc<Admission>,
    conn: Arc<Conn>,
    counted_for_source: bool,
}

impl Admission {
    pub fn new(
        max_connections: usize,
        max_connections_per_source: usize,
        max_in_flight_per_source: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Admission {
            max_connections: max_connections.max(1),
            max_connections_per_source: max_connections_per_source.max(1),
            max_in_flight_per_source: max_in_flight_per_source.max(1),
            table: Mutex::new(Table::default()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `source`, displacing the longest-idle
    /// connection when at the total limit.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnGuard, Refusal> {
        let mut t = self.lock();
        if t.per_source.get(&source).is_some_and(|s| s.connections >= self.max_connections_per_source) {
            return Err(Refusal::SourceConnections);
        }
        if t.conns.len() >= self.max_connections {
            let victim = t
                .conns
                .values()
                .filter(|c| c.is_idle())
                .min_by_key(|c| *c.idle_since.lock().unwrap_or_else(|e| e.into_inner()))
                .cloned();
            let Some(victim) = victim else { return Err(Refusal::Full) };
            // Out of the table now, so that it is not chosen twice; its task closes it.
            t.conns.remove(&victim.id);
            dec_source(&mut t, victim.source, |s| &mut s.connections);
            victim.close.notify_one();
            self.metrics.rejected.get_or_create(&crate::metrics::Reason { reason: "idle_displaced" }).inc();
        }
        t.next_id += 1;
        let conn = Arc::new(Conn {
            id: t.next_id,
            source,
            requests: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            close: Notify::new(),
        });
        t.conns.insert(conn.id, conn.clone());
        t.per_source.entry(source).or_default().connections += 1;
        self.metrics.connections.set(t.conns.len() as i64);
        Ok(ConnGuard { admission: self.clone(), conn })
    }

    /// Marks a request in progress on `conn`.
    pub fn request(self: &Arc<Self>, conn: &Arc<Conn>) -> RequestGuard {
        conn.requests.fetch_add(1, Ordering::SeqCst);
        self.metrics.in_flight.inc();
        RequestGuard { admission: self.clone(), conn: conn.clone(), counted_for_source: false }
    }

    /// Counts the request against its source's in-flight share; false when
    /// the source is at its share already.
    pub fn take_source_slot(&self, guard: &mut RequestGuard) -> bool {
        if guard.counted_for_source {
            return true;
        }
        let mut t = self.lock();
        let s = t.per_source.entry(guard.conn.source).or_default();
        if s.in_flight >= self.max_in_flight_per_source {
            return false;
        }
        s.in_flight += 1;
        guard.counted_for_source = true;
        true
    }

    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }
}

fn dec_source(t: &mut Table, source: IpAddr, field: impl Fn(&mut Source) -> &mut usize) {
    if let Some(s) = t.per_source.get_mut(&source) {
        let f = field(s);
        *f = f.saturating_sub(1);
        if s.connections == 0 && s.in_flight == 0 {
            t.per_source.remove(&source);
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        // A displaced connection was taken out of the table already.
        if t.conns.remove(&self.conn.id).is_some() {
            dec_source(&mut t, self.conn.source, |s| &mut s.connections);
        }
        self.admission.metrics.connections.set(t.conns.len() as i64);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.counted_for_source {
            let mut t = self.admission.lock();
            dec_source(&mut t, self.conn.source, |s| &mut s.in_flight);
        }
        *self.conn.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.conn.requests.fetch_sub(1, Ordering::SeqCst);
        self.admission.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn at_the_limit_the_longest_idle_connection_makes_room() {
        let a = Admission::new(3, 10, 10, Arc::new(Metrics::default()));
        let first = a.admit(ip(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let busy = a.admit(ip(1)).unwrap();
        let _req = a.request(&busy.conn);
        let third = a.admit(ip(2)).unwrap();
        // Full: the oldest idle one (the first) is displaced, not the busy one.
        let fourth = a.admit(ip(3)).unwrap();
        assert_eq!(a.connections(), 3);
        drop(first);
        assert_eq!(a.connections(), 3, "a displaced connection is not counted twice");
        drop(third);
        drop(fourth);
        // With every connection busy, a new one is refused.
        let b = a.admit(ip(4)).unwrap();
        let _rb = a.request(&b.conn);
        let c = a.admit(ip(5)).unwrap();
        let _rc = a.request(&c.conn);
        assert_eq!(a.admit(ip(6)).err(), Some(Refusal::Full));
    }

    #[test]
    fn each_source_has_its_share() {
        let a = Admission::new(100, 2, 1, Arc::new(Metrics::default()));
        let c1 = a.admit(ip(1)).unwrap();
        let _c2 = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::SourceConnections));
        let _other = a.admit(ip(2)).unwrap();
        let mut r1 = a.request(&c1.conn);
        assert!(a.take_source_slot(&mut r1));
        let mut r2 = a.request(&c1.conn);
        assert!(!a.take_source_slot(&mut r2));
        drop(r1);
        assert!(a.take_source_slot(&mut r2));
        drop(c1);
        assert!(a.admit(ip(1)).is_ok());
    }
}
