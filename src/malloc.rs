//! The C allocator, tuned once at start for a long-running service.
//!
//! glibc's malloc gives every thread that allocates under contention an
//! arena of its own (up to 8 per core) and rarely returns their free space.
//! The bridge allocates and frees small buffers on every poll from tokio's
//! workers, SQLite's threads and the MQTT tasks, so resident memory grew in
//! steps to several times the live heap (measured at 5,000 agents polled
//! every second: 65 → 85 MB and rising, against a peak heap of 27 MB seen by
//! heaptrack). Two arenas keep it flat (35 MB) at the same CPU per poll.

/// Arenas glibc may create; see the module doc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

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
