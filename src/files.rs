//! The open-files limit. Each open stream to an HTTP/1.1 provider holds two descriptors (the
//! client's socket and the provider's), one to an HTTP/2 provider; the usual soft limit of
//! 1,024 would refuse connections long before `server.max_connections`. As nginx's
//! `worker_rlimit_nofile` and Go's runtime do, the soft limit is raised to the hard one at
//! start, and a hard limit too low for the connection cap is said in the log.

/// Descriptors beyond the streams: listeners, the admin API, idle pooled connections, the
/// state file, etcd, webhooks.
const SPARE: u64 = 256;

/// Raises the soft limit to the hard limit; warns when even that is below what
/// `max_connections` streams to HTTP/1.1 providers need. Returns the limit now in force.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn raise(max_connections: usize) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let have: u64 = lim.rlim_cur;
    let need = needed(max_connections);
    if have < need {
        tracing::warn!(
            open_files = have,
            needed = need,
            "the open-files limit is below what server.max_connections streams to HTTP/1.1 providers need (2 per stream + {SPARE}): raise it (ulimit -n, LimitNOFILE=, the container runtime's nofile) or lower max_connections"
        );
    }
    Some(have)
}

#[cfg(not(unix))]
pub fn raise(_max_connections: usize) -> Option<u64> {
    None
}

/// Two descriptors per stream to an HTTP/1.1 provider, and the spare.
fn needed(max_connections: usize) -> u64 {
    2 * max_connections as u64 + SPARE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_needs_two_descriptors_a_stream_and_the_spare() {
        assert_eq!(needed(10_000), 20_256);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let have = raise(1).expect("getrlimit works here");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        assert_eq!(have, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
