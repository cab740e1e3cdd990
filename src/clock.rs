//! The kernel's clocks as nanoseconds. The kernel tier compares them with
//! `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) to date the last packet of a stream; the
//! load generator and sink carry them in packets to measure latency.

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; both clocks used here always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` and of `std::time::Instant` on Linux.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns` (tick resolution).
pub fn monotonic_coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// CLOCK_REALTIME, the clock of kernel receive timestamps (SO_TIMESTAMPNS).
pub fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}
