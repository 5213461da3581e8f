//! The one HTTP/1.1 serve loop of the enclave, the host shim and the proxy:
//! accept until shutdown, at most `max_connections` at once (more wait in the
//! listen queue), a timeout on every request head, and on shutdown a drain
//! that lets the request in progress on each connection (a stream included)
//! finish within the grace period.
//!
//! What differs between the roles is what a connection gets: the caller's
//! `connection` callback turns each accepted connection into its service, a
//! signal that closes it early (the host shim displaces idle connections of
//! a busy address), and whatever must live as long as it (a per-address slot);
//! or refuses it.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::drain::Drain;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// Connections served at once; `None` when the caller's `connection`
    /// callback decides instead (the host shim closes an idle one).
    pub max_connections: Option<usize>,
    /// Longest wait for a request's head, on a new or a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Largest request head (hyper answers 431 past it); `None`: hyper's default.
    pub max_buf_size: Option<usize>,
}

/// How one accepted connection is served.
pub struct Accepted<S> {
    pub service: S,
    /// Resolves when the connection should finish its request and close; pending for never.
    pub close: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Kept until the connection ends (a per-address slot, a counter's guard).
    pub hold: Box<dyn Send>,
}

impl<S> Accepted<S> {
    /// A connection with nothing more than its service.
    pub fn service(service: S) -> Self {
        Accepted { service, close: Box::pin(std::future::pending()), hold: Box::new(()) }
    }
}

/// Serves until `shutdown` resolves, then drains for up to `grace`.
/// `accept` must own the listener (an `Arc` of it, each call's future a
/// clone): it is dropped before the drain, so that new connections are
/// refused while the requests in progress finish. `connection` sees each
/// accepted stream and its peer, and returns how to serve it, or `None` to
/// drop it; `ended` runs as each connection closes.
pub async fn serve_http<I, P, S, B, F>(
    mut accept: impl FnMut() -> F,
    shutdown: impl Future<Output = ()>,
    options: HttpOptions,
    grace: Duration,
    mut connection: impl FnMut(&I, P) -> Option<Accepted<S>>,
    ended: impl Fn() + Clone + Send + 'static,
) -> std::io::Result<()>
where
    F: Future<Output = std::io::Result<(I, P)>>,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let drain = Drain::default();
    let slots = Arc::new(Semaphore::new(options.max_connections.map_or(Semaphore::MAX_PERMITS, |n| n.max(1))));
    tokio::pin!(shutdown);
    loop {
        // At the cap, further connections wait in the listen queue.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = &mut shutdown => break,
        };
        let Some((stream, peer)) = crate::accept_until(&mut accept, &mut shutdown).await else { break };
        let Some(Accepted { service, close, hold }) = connection(&stream, peer) else { continue };
        let mut guard = drain.guard();
        let ended = ended.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout);
            if let Some(n) = options.max_buf_size {
                builder.max_buf_size(n);
            }
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = guard.serve(conn, close, |c| c.graceful_shutdown()).await {
                debug!("connection ended: {e}");
            }
            ended();
            drop((hold, permit, guard));
        });
    }
    drop(accept);
    drain.finish(grace).await;
    Ok(())
}
