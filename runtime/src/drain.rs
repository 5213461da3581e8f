//! Graceful shutdown: stop accepting, tell every connection to finish the
//! request it is serving (streams included) and close, wait for them up to a
//! grace period.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{info, warn};

#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    stopping: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

/// Held by each connection task; its drop counts the connection closed.
pub struct DrainGuard {
    inner: Arc<Inner>,
    stopping: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                stopping: watch::channel(false).0,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Drain {
    pub fn guard(&self) -> DrainGuard {
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        DrainGuard { inner: self.inner.clone(), stopping: self.inner.stopping.subscribe() }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    pub fn is_stopping(&self) -> bool {
        *self.inner.stopping.borrow()
    }

    /// Tells every connection to finish, then waits up to `grace` for them;
    /// returns the number still open when it gave up.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.stopping.send_replace(true);
        let all_closed = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, all_closed).await;
        self.active()
    }

    /// [`Drain::drain`] for a server that has just stopped accepting, with
    /// what it waited for and what it gave up on in the log.
    pub async fn finish(&self, grace: Duration) {
        info!(connections = self.active(), "stopped accepting; letting requests in progress finish");
        let left = self.drain(grace).await;
        if left > 0 {
            warn!("{left} connections still open after the grace period; closing them");
        }
    }
}

impl DrainGuard {
    /// Resolves once shutdown has begun.
    pub async fn stopping(&mut self) {
        let _ = self.stopping.wait_for(|s| *s).await;
    }

    /// Drives a connection to its end. Once shutdown begins, or `close`
    /// resolves, `graceful` is called on it (hyper's `graceful_shutdown`:
    /// the request in progress finishes, nothing new is read) and it is
    /// driven to its end still.
    pub async fn serve<C: Future>(
        &mut self,
        conn: C,
        close: impl Future<Output = ()>,
        graceful: impl FnOnce(Pin<&mut C>),
    ) -> C::Output {
        tokio::pin!(conn);
        tokio::select! {
            out = conn.as_mut() => return out,
            _ = self.stopping() => {}
            _ = close => {}
        }
        graceful(conn.as_mut());
        conn.await
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_connections_up_to_the_grace() {
        let d = Drain::default();
        assert_eq!(d.drain(Duration::from_millis(10)).await, 0);
        let d = Drain::default();
        let mut g = d.guard();
        let task = tokio::spawn(async move {
            g.stopping().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(g);
        });
        assert_eq!(d.drain(Duration::from_secs(5)).await, 0);
        task.await.unwrap();
        let stuck = d.guard();
        assert_eq!(d.drain(Duration::from_millis(20)).await, 1);
        drop(stuck);
    }
}
