//! Memory comes back after a burst. glibc's malloc keeps what a burst of streams freed in
//! its per-thread arenas (only the top of a heap is ever returned), so without a trim the
//! gateway's RSS stays at the burst's peak long after the streams ended. `malloc_trim`
//! gives back every free page of every arena; it walks the free lists, so it runs once a
//! burst is over, and under steady load once a minute: load that never ends still moves
//! between connections (a phase move, a rollback, provider connections closing when idle)
//! and leaves freed pages behind that would otherwise stay resident for the rest of the
//! process (the soak grew 45 → 54 MB in 17 minutes with in-use memory flat at 32 MB).
//! What it gave back, and the allocator tried instead: `benches/README.md`.

/// Open client connections at or below this are not a burst.
const QUIET: usize = 64;

/// Seconds after a burst's end at which memory is trimmed again: what the burst's upstream
/// connections held is freed only when they are closed, up to `upstream_idle_timeout`
/// (90 s by default) plus a sweep later.
const AGAIN_AFTER_S: [u32; 4] = [15, 45, 75, 105];

/// Seconds of steady load (more than [`QUIET`] connections open) between trims. Not
/// shorter: a trim walks every free chunk under its arena's lock, and after a burst had
/// grown the free lists to 90 MB, trims every 10 s held them 5.6 ms at the median and
/// 28.6 ms at worst (`benches/README.md`, section 4), a stall for every request that
/// allocates meanwhile.
const UNDER_LOAD_EVERY_S: u32 = 60;

/// Watches the number of open client connections, sampled once a second, and gives freed
/// memory back when it falls to a quarter of its peak since the last trim, and a few times
/// more while it stays quiet.
#[derive(Debug, Default)]
pub struct GiveBack {
    peak: usize,
    /// Seconds since the last burst ended, while quiet.
    quiet_s: Option<u32>,
    /// Seconds under load since the last trim.
    busy_s: u32,
}

impl GiveBack {
    /// Returns whether memory was trimmed.
    pub fn tick(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        if self.peak > QUIET && open <= self.peak / 4 {
            trim();
            self.peak = open;
            self.quiet_s = Some(0);
            self.busy_s = 0;
            return true;
        }
        if open > QUIET {
            self.busy_s += 1;
            if self.busy_s >= UNDER_LOAD_EVERY_S {
                trim();
                self.busy_s = 0;
                return true;
            }
        }
        let Some(s) = self.quiet_s.as_mut() else {
            return false;
        };
        if open > QUIET {
            self.quiet_s = None;
            return false;
        }
        *s += 1;
        if AGAIN_AFTER_S.contains(s) {
            trim();
            return true;
        }
        if *s > AGAIN_AFTER_S[AGAIN_AFTER_S.len() - 1] {
            self.quiet_s = None;
        }
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    let start = std::time::Instant::now();
    // SAFETY: malloc_trim takes no pointer and only releases glibc's own free pages; it
    // locks each arena as it goes, so it is safe beside allocating threads.
    unsafe {
        libc::malloc_trim(0);
    }
    // How long allocating threads may have waited on an arena's lock.
    let took_us = start.elapsed().as_micros();
    // mallinfo2 walks every arena's bins under its lock too: only when it is read.
    if !tracing::enabled!(target: "switchyard::memory", tracing::Level::DEBUG) {
        return;
    }
    // What a slow rise of RSS is made of (a leak moves `in_use`; fragmentation moves
    // `free` and RSS with `in_use` flat): read by `benches/soak.sh`.
    // SAFETY: mallinfo2 takes no argument and returns a plain struct of counters.
    let m = unsafe { libc::mallinfo2() };
    tracing::debug!(
        target: "switchyard::memory",
        in_use_kb = (m.uordblks + m.hblkhd) / 1024,
        free_kb = m.fordblks / 1024,
        mapped_kb = m.hblkhd / 1024,
        rss_kb = rss_kb(),
        took_us,
        "memory trimmed"
    );
}

/// Resident memory, from `/proc/self/statm` (0 where it cannot be read).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn rss_kb() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096) / 1024
}

/// Other C libraries' allocators (musl's) return memory as it is freed.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_when_a_burst_is_over() {
        let mut m = GiveBack::default();
        assert!(!m.tick(10), "quiet all along");
        assert!(!m.tick(50));
        assert!(!m.tick(4_000), "the burst");
        assert!(!m.tick(2_000), "still half of it");
        assert!(m.tick(900), "under a quarter of the peak");
        assert!(!m.tick(800), "once");
        assert!(!m.tick(5_000));
        assert!(m.tick(3), "the next burst ends");
        let again: Vec<u32> = (1..=200).filter(|_| m.tick(3)).collect();
        assert_eq!(
            again, AGAIN_AFTER_S,
            "and again while quiet, as connections close"
        );
        let mut busy = GiveBack::default();
        assert!(!busy.tick(10_000));
        assert!(busy.tick(100));
        assert!(
            (1..=14).all(|_| !busy.tick(1_000)),
            "busy again: no follow-up"
        );
        let steady: Vec<u32> = (1..=200).filter(|_| busy.tick(1_000)).collect();
        assert_eq!(
            steady,
            [46, 106, 166],
            "under steady load, once a minute (counted from the burst's trim)"
        );
        let mut idle = GiveBack::default();
        assert!(
            (1..=300).all(|_| !idle.tick(3)),
            "an idle gateway is left alone"
        );
    }
}
