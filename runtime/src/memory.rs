//! Giving freed memory back to the system.
//!
//! glibc keeps freed heap memory for reuse, so after a burst of large or
//! many concurrent requests the resident size stays at its peak. Inside a
//! VM with fixed memory that is a slow way to die: once activity has been
//! seen, a background task asks the allocator to return free pages
//! (`malloc_trim`) every `interval`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often freed memory is returned after activity.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct MemoryTrimmer {
    activity: Arc<AtomicU64>,
}

impl MemoryTrimmer {
    /// Something that allocated finished (a connection, a request).
    pub fn note_activity(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Trims every [`TRIM_INTERVAL`] while there is activity, and once after it stops.
    pub fn spawn(&self) {
        let interval = TRIM_INTERVAL;
        let activity = self.activity.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::time::sleep(interval).await;
                let now = activity.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    // malloc_trim walks the heap: keep it off the async workers.
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
            }
        });
    }
}

/// Returns free heap pages to the system; true when some were released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// This process's resident set size in bytes (Linux), for tests and gauges.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
