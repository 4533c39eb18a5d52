//! Health state of one provider from active checks, with hysteresis.

/// Starts healthy (a provider is trusted until checks say otherwise, so a restart does
/// not flap readiness), turns unhealthy after `unhealthy_threshold` failures in a row and
/// healthy again after `healthy_threshold` successes in a row.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    healthy: bool,
    streak: u32,
    checked: bool,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            healthy: true,
            streak: 0,
            checked: false,
        }
    }
}

impl HealthTracker {
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Whether at least one check finished.
    pub fn checked(&self) -> bool {
        self.checked
    }

    /// Feeds one check result; returns the new state when it changed.
    pub fn observe(
        &mut self,
        ok: bool,
        unhealthy_threshold: u32,
        healthy_threshold: u32,
    ) -> Option<bool> {
        self.checked = true;
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if self.healthy {
            unhealthy_threshold
        } else {
            healthy_threshold
        };
        if self.streak >= need.max(1) {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis() {
        let mut h = HealthTracker::default();
        assert!(h.healthy());
        assert_eq!(h.observe(false, 2, 2), None);
        assert_eq!(h.observe(true, 2, 2), None); // streak broken
        assert_eq!(h.observe(false, 2, 2), None);
        assert_eq!(h.observe(false, 2, 2), Some(false));
        assert!(!h.healthy());
        assert_eq!(h.observe(true, 2, 2), None);
        assert_eq!(h.observe(true, 2, 2), Some(true));
        assert_eq!(h.observe(true, 2, 2), None);
    }
}
