//! Process plumbing shared by the long-running roles (enclave, host shim,
//! proxy) and the client runner: shutdown on SIGTERM or Ctrl-C, draining
//! connections within a grace period, giving freed memory back to the system,
//! enough file descriptors for thousands of clients, the clock, and the log.

pub mod drain;
#[allow(unsafe_code)] // malloc_trim and sysconf
pub mod memory;
pub mod pump;
pub mod serve;
pub mod sync;

pub use drain::{Drain, DrainGuard};

/// How long in-flight requests (streams included) may take to finish after a
/// shutdown signal, unless the operator says otherwise (`--grace`).
pub const DEFAULT_GRACE_S: u64 = 30;

/// Unix time in seconds (0 before 1970: a clock that wrong is a bug elsewhere).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The log: to stderr, filtered by `COCOON_LOG` (`info`, `warn`,
/// `cocoon_proxy=debug`...), else at `default` level.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COCOON_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
}
pub use memory::MemoryTrimmer;
pub use serve::{Accepted, HttpOptions, serve_http};
pub use sync::{LockExt, RwLockExt};

/// The next accepted connection, or `None` once `shutdown` has resolved. A
/// failed accept (out of file descriptors, say) is logged and retried after
/// 50 ms: it must not end the server.
pub async fn accept_until<T, A, S>(mut accept: impl FnMut() -> A, shutdown: &mut std::pin::Pin<&mut S>) -> Option<T>
where
    A: std::future::Future<Output = std::io::Result<T>>,
    S: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            a = accept() => match a {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.as_mut() => return None,
        }
    }
}

/// Resolves on SIGTERM (what service managers and `docker stop` send) or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Raises the limit on open files: each client connection is a descriptor,
/// and the usual soft limit of 1,024 is below the connection limits the
/// servers are built for. The soft limit goes to the hard limit; a process
/// allowed to (root) raises both to at least `WANTED_FDS`. Returns the new
/// soft limit.
#[allow(unsafe_code)] // getrlimit and setrlimit
pub fn raise_fd_limit() -> u64 {
    const WANTED_FDS: libc::rlim_t = 65_536;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_max < WANTED_FDS {
            let both = libc::rlimit { rlim_cur: WANTED_FDS, rlim_max: WANTED_FDS };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &both) == 0 {
                return WANTED_FDS;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}
