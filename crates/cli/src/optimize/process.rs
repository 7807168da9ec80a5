//! Settings of the process that `rtserve optimize` makes before it starts any thread, for the
//! trainer's speed (docs/training.md, "Training speed"). A value the user set is kept.

/// Both settings, in order.
pub(super) fn tune() {
    shorten_candle_spin();
    keep_freed_memory();
}

/// The trainer's element-wise operations run on candle's thread pool, whose idle worker spins
/// 25,000 times before it sleeps; on a small machine that spinning takes a core from the
/// trainer's own kernels (rayon) after every operation. Spinning 1,000 times made a Fashion-MNIST
/// epoch about 15 % faster on 2 cores.
fn shorten_candle_spin() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // Safe here: no other thread has started yet (candle's pool reads this when it starts).
        std::env::set_var(VAR, "1000");
    }
}

/// Every training step allocates and frees tensors of up to a few MB. By default glibc gives a
/// freed block over its mmap threshold back to the kernel (and maps it again at the next step)
/// and trims each arena's free top: page faults, pages zeroed again, and TLB-flush interrupts
/// between the two threads: up to 40 % of the CPU time of a Fashion-MNIST epoch on the 2-core
/// VM. Blocks up to 32 MB (glibc's largest threshold) come from the arenas instead, and the
/// arenas keep what is freed for the next step; the peak resident memory stays about the same.
/// The user's own `GLIBC_TUNABLES` or `MALLOC_*_` variables are kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    let user_set = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
        || std::env::vars_os().any(|(name, _)| name.to_string_lossy().starts_with("MALLOC_"));
    if user_set {
        return;
    }
    // SAFETY: mallopt is glibc's documented entry point for these two parameters; it takes
    // plain integers, is thread-safe, and a value it refuses leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Other C libraries keep their own allocator's behaviour.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
