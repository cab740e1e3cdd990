//! CPU time of the data-plane threads, read from `/proc/self/task` at scrape time (nothing is
//! added to the packet path). Its rate is each relay thread's utilisation: what an operator
//! looks at to size `media.threads` and `media.cores`, and to see a core saturate before
//! packets are lost.

use std::fs;

/// Thread-name prefixes the data planes give their relay threads, and the tier of each.
const RELAY_THREADS: [(&str, &str); 2] = [("media-", "socket"), ("afxdp-", "afxdp")];

/// One relay thread's CPU time so far.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadCpu {
    pub tier: &'static str,
    /// The thread's name (`media-0`, `afxdp-1`, ...).
    pub thread: String,
    pub seconds: f64,
}

/// Every relay thread of this process with its CPU time (run time from `schedstat`, which
/// counts nanoseconds on a CPU, unlike the tick-sampled `stat` columns). Threads whose files
/// cannot be read (ended meanwhile) are left out.
pub fn relay_threads() -> Vec<ThreadCpu> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: Vec<ThreadCpu> = tasks
        .flatten()
        .filter_map(|task| {
            let path = task.path();
            let name = fs::read_to_string(path.join("comm")).ok()?;
            let name = name.trim_end();
            let (_, tier) = RELAY_THREADS.iter().find(|(p, _)| name.starts_with(p))?;
            let schedstat = fs::read_to_string(path.join("schedstat")).ok()?;
            let ns: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
            Some(ThreadCpu {
                tier,
                thread: name.to_string(),
                seconds: ns as f64 / 1e9,
            })
        })
        .collect();
    out.sort_by(|a, b| a.thread.cmp(&b.thread));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn finds_relay_threads_by_name_with_their_cpu_time() {
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let thread = std::thread::Builder::new()
            .name("media-77".into())
            .spawn(move || {
                while !spinning.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        // Bounded: the spinning thread gets CPU time within the deadline on any scheduler.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while Instant::now() < deadline {
            found = relay_threads().into_iter().find(|t| t.thread == "media-77");
            if found.as_ref().is_some_and(|t| t.seconds > 0.0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        let t = found.expect("the named thread is listed");
        assert_eq!(t.tier, "socket");
        assert!(t.seconds > 0.0, "{t:?}");
        assert!(
            relay_threads().iter().all(|t| t.thread != "media-77"),
            "an ended thread is gone"
        );
    }
}
