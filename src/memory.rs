//! The C allocator's part in the process's resident memory (glibc only; elsewhere nothing).
//!
//! Measured with a million pending deliveries (`benches/backlog.rs`): glibc keeps up to eight
//! malloc arenas per core, and the threads that read and write storage spread sled's nodes over
//! several of them, each holding freed memory of its own; and opening sled builds its page table
//! beside the snapshot it reads, whose freed memory stays resident between the table's entries.
//! Two arenas and one trim after opening took ~40 MiB off at start and ~55 MiB off the growth
//! while the backlog was retried.

/// Cap the malloc arenas at two (call before any thread starts).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hand memory the allocator holds free back to the system (after a large transient use,
/// such as opening the store).
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
