//! The C allocator, tuned once at start for a long-running service.
//!
//! glibc's malloc gives every thread that allocates under contention an
//! arena of its own (up to 8 per core) and rarely returns their free space.
//! The bridge allocates and frees small buffers on every poll from tokio's
//! workers, SQLite's threads and the MQTT tasks, so resident memory grew in
//! steps to several times the live heap (measured at 5,000 agents polled
//! every second: 65 → 85 MB and rising, against a peak heap of 27 MB seen by
//! heaptrack). Two arenas kept it flat (35 MB) at the same CPU per poll;
//! one arena lowers the peak after the start-up burst from 48 to 42 MB,
//! again at the same CPU per poll (every thread's small blocks come from
//! its own cache first, so the arena's lock is rarely contended).
//!
//! glibc also keeps what a burst freed (the first round of 5,000 polls,
//! a broker outage's backlog) mapped inside its arenas: resident memory
//! stays at the burst's peak. [`trim_every`] hands free pages back to the
//! system now and then (`malloc_trim`): at 5,000 agents polled every
//! second, 36 → 29.5 MB of anonymous memory after the start-up burst.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Arenas glibc may create; see the module doc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 1;

/// Limits glibc's arenas; call before any thread starts. Elsewhere (musl,
/// other systems) a no-op.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a parameter of the allocator; it is called
    // once, from `main`, before the runtime starts any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hands the allocator's free pages back to the operating system; true when
/// some were. Elsewhere (musl, other systems) a no-op.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free;
    // it takes the arenas' locks itself and may be called from any thread.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Copies `value` and drops the original, then trims: for what a
/// parse-heavy phase built and the process keeps for good.
///
/// Loading the configuration of 5,000 agents holds three copies of
/// figment's value tree at once (a 17 MB heap peak for a 250 KB file), and
/// the agents' strings it keeps are scattered through that space: freed,
/// the scratch between them stayed resident as thousands of holes (9 MB
/// free inside a 21 MB heap, measured with `malloc_info` at 5,000 agents
/// polled every second). The copy is made after the scratch is freed, so
/// its strings (names, extensions, URLs; agent ids are shared, not copied)
/// pack into the heap's first free space, and the scattered original goes
/// back with the rest. Called once at start, before the bridge's tasks
/// exist, so its trim (a few milliseconds) may run where it is called.
pub fn settle<T: Clone>(value: T) -> T {
    let settled = value.clone();
    drop(value);
    trim();
    settled
}

/// Runs [`trim`] every `every` until `shutdown`. A trim walks the free
/// lists of a heap of some tens of MB: a millisecond or two, so it runs on
/// the blocking pool, never on a runtime worker.
pub async fn trim_every(every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the start-up burst is not over yet.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => tracing::debug!(
                released,
                elapsed_us = started.elapsed().as_micros() as u64,
                "free heap memory handed back to the system"
            ),
            Err(error) => tracing::warn!(%error, "the heap trim failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A settled value is an equal copy.
    #[test]
    fn settle_returns_an_equal_copy() {
        let original = vec![String::from("agent1001"); 3];
        assert_eq!(settle(original.clone()), original);
    }

    /// Memory freed after a burst is handed back: resident memory drops.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_hands_freed_memory_back() {
        // Many small blocks (below the mmap threshold: they live in the
        // arena), all freed but the last, which pins the heap's top so
        // glibc cannot shrink it on its own.
        let blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 1000]).collect();
        let pin = vec![1u8; 1000];
        drop(blocks);
        let before = crate::metrics::resident_memory_bytes();
        assert!(trim(), "free pages were handed back");
        let after = crate::metrics::resident_memory_bytes();
        assert!(
            after + 10_000_000 < before,
            "resident {before} -> {after} bytes"
        );
        drop(pin);
    }
}
