//! Failed-authentication limiter (API.md A21).
//!
//! Failures are counted per (principal, client address) and per client address in fixed
//! one-minute windows. Never per principal alone: nobody can lock `owner` out by failing in its
//! name from elsewhere. A valid credential is never refused: callers consult the limiter only
//! after a credential failed. Counts are per instance (a limit, not an exactly-once rule).

use std::collections::HashMap;
use std::sync::Mutex;

const WINDOW_SECS: i64 = 60;

/// Limits per window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// failures per (principal, address)
    pub per_principal_address: u32,
    /// failures per address
    pub per_address: u32,
}

impl Default for Limits {
    /// API.md A21: at least 10 per principal and 50 per address must be tolerated, and the
    /// 200th consecutive failure of one principal must be refused. The per-address limit is
    /// generous so that many distinct callers behind one address (a NAT, a test suite) are not
    /// refused for each other's mistakes.
    fn default() -> Self {
        Self { per_principal_address: 150, per_address: 1000 }
    }
}

/// The limiter.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    limits: Limits,
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

impl FailureLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits, windows: Mutex::new(HashMap::new()) }
    }

    /// Records one failure; returns `Some(retry_after_secs)` when the caller is now over a limit.
    pub fn fail(&self, principal: Option<&str>, addr: &str, now: i64) -> Option<i64> {
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now - *start < WINDOW_SECS);
        }
        let mut bump = |key: String, limit: u32| -> Option<i64> {
            let slot = windows.entry(key).or_insert((now, 0));
            if now - slot.0 >= WINDOW_SECS {
                *slot = (now, 0);
            }
            slot.1 = slot.1.saturating_add(1);
            (slot.1 > limit).then(|| (slot.0 + WINDOW_SECS - now).max(1))
        };
        let by_addr = bump(format!("a\0{addr}"), self.limits.per_address);
        let by_pair = principal
            .and_then(|p| bump(format!("p\0{p}\0{addr}"), self.limits.per_principal_address));
        by_addr.into_iter().chain(by_pair).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_pair_and_per_address_and_resets_after_a_window() {
        let l = FailureLimiter::new(Limits { per_principal_address: 3, per_address: 5 });
        for _ in 0..3 {
            assert_eq!(l.fail(Some("owner"), "10.0.0.1", 100), None);
        }
        assert_eq!(l.fail(Some("owner"), "10.0.0.1", 110), Some(50));
        // Another address failing as owner is not affected by the first one.
        assert_eq!(l.fail(Some("owner"), "10.0.0.2", 110), None);
        // Per-address limit catches rotating principal names.
        assert_eq!(l.fail(Some("a"), "10.0.0.1", 111), None, "5th failure from the address");
        assert_eq!(l.fail(Some("b"), "10.0.0.1", 111), Some(49), "6th is over the address limit");
        assert_eq!(l.fail(Some("owner"), "10.0.0.1", 161), None, "new window");
    }
}
