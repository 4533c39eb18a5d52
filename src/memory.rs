//! The gateway's allocator, and memory given back after a burst.
//!
//! On Linux the allocator is jemalloc. Every request allocates about twenty blocks and
//! frees them when its answer ends. glibc's malloc served the largest (the request's
//! future, then 3.7 KB, above its per-thread cache's 1,032-byte limit) from its shared bins;
//! under wrk its malloc and free were 13% of the gateway's user-space CPU, against 4%
//! with jemalloc, whose per-thread caches take blocks up to 32 KB (`benches/README.md`,
//! section 2). Memory per open stream stayed within 1 KB of glibc's; mimalloc, tried
//! before, held twice glibc's. Its per-thread caches keep their default sizes: a larger
//! cache (64 blocks of each small size) saved 1,300 instructions a request while the
//! request's future was 3.7 KB, and nothing since it is 1.3 KB (`benches/README.md`,
//! section 2).
//!
//! jemalloc gives freed pages back itself, gradually over the 10 s after they were freed
//! (its dirty-page decay), from its background threads (started with the gateway: without
//! them it gives back only while it allocates, so an idle gateway would stay at a burst's
//! peak). On top of that the gateway purges every arena at once when a burst is over, a
//! few times more as the burst's upstream connections close, and once a minute under
//! steady load, where load that never ends still moves between connections (a phase move,
//! a rollback, provider connections closing when idle). What it gave back:
//! `benches/README.md`.

/// jemalloc, on the platform the gateway is built and measured on.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background threads, which give freed pages back while the workers
/// are idle. Called once at start, before the workers allocate much.
pub fn start_giving_back() {
    #[cfg(target_os = "linux")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("memory: jemalloc's background threads did not start ({e}); freed memory is given back only while the gateway allocates and at bursts' ends");
    }
}

/// Open client connections at or below this are not a burst.
const QUIET: usize = 64;

/// Seconds after a burst's end at which memory is trimmed again: what the burst's upstream
/// connections held is freed only when they are closed, up to `upstream_idle_timeout`
/// (90 s by default) plus a sweep later.
const AGAIN_AFTER_S: [u32; 4] = [15, 45, 75, 105];

/// Seconds of steady load (more than [`QUIET`] connections open) between trims. Not
/// shorter: a purge holds each arena's lock while it gives pages back (0.24 ms at the
/// median of an hour at 2,500 requests/s, 6.3 ms at worst; with glibc's `malloc_trim`,
/// which walked every free chunk, 5.6 ms and 28.6 ms: `benches/README.md`, section 4),
/// a stall for every request that allocates in that arena meanwhile.
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

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn trim() {
    let start = std::time::Instant::now();
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` is a void control: jemalloc reads and
    // writes nothing through the pointers, which must be null with lengths 0. It locks each
    // arena as it goes, so it is safe beside allocating threads.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    // How long allocating threads may have waited on an arena's lock.
    let took_us = start.elapsed().as_micros();
    if rc != 0 {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!("memory: jemalloc refused to purge its arenas (error {rc}); freed memory is given back by its decay alone");
        });
    }
    if !tracing::enabled!(target: "switchyard::memory", tracing::Level::DEBUG) {
        return;
    }
    // What a slow rise of RSS is made of (a leak moves `in_use`; fragmentation moves
    // `free` and RSS with `in_use` flat): read by `benches/soak.sh`. The counters are
    // jemalloc's as of the epoch just advanced.
    let _ = tikv_jemalloc_ctl::epoch::advance();
    let in_use = tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0);
    let resident = tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0);
    tracing::debug!(
        target: "switchyard::memory",
        in_use_kb = in_use / 1024,
        free_kb = resident.saturating_sub(in_use) / 1024,
        rss_kb = rss_kb(),
        took_us,
        purged = rc == 0,
        "memory trimmed"
    );
}

/// Resident memory, from `/proc/self/statm` (0 where it cannot be read).
#[cfg(target_os = "linux")]
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

/// Elsewhere the system allocator is kept, and left to itself.
#[cfg(not(target_os = "linux"))]
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
