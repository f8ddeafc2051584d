//! Failed-authentication limiter (API.md A21, A25, A30).
//!
//! Failures are counted per (principal, client address) and per client address in fixed
//! one-minute windows that start at a key's first failure. Never per principal alone: nobody can
//! lock `owner` out by failing in its name from elsewhere. A valid credential is never refused:
//! callers consult the limiter only after a credential failed (or, for logins, ask
//! [`FailureLimiter::is_limited`] to skip hashing for a caller that is refused anyway). Counts
//! are per instance (a limit, not an exactly-once rule).
//!
//! Bounds (A25): [`SHARDS`] shards of at most [`KEYS_PER_SHARD`] keys each, 65,536 keys in all;
//! a key is a keyed 64-bit hash (SipHash with per-process random keys, so callers cannot aim at
//! collisions), and only a key that is currently limited also holds its principal (at most
//! [`MAX_PRINCIPAL_CHARS`] characters) and address, for its summary. Worst case about 5 MiB of
//! slots plus 600 bytes per limited key. Each failure locks one shard (or two: address, then
//! pair) and costs O(1) amortized: a full shard evicts its oldest key that is not limited
//! (FIFO with lazy deletion); a limited key stays until its window ends; when a shard holds only
//! limited keys, a failure with a new key is refused (429) instead of evicting one.
//!
//! While a key is limited its further failures are not audited one by one: they are counted on
//! the key and handed out once per key and window by [`FailureLimiter::due_summaries`] (at
//! shutdown by [`FailureLimiter::drain_summaries`]), for one `auth.failure.summary` row and one
//! log line each.

use std::collections::hash_map::{Entry as MapEntry, HashMap, RandomState};
use std::collections::VecDeque;
use std::hash::BuildHasher as _;
use std::sync::Mutex;

/// Length of a window, seconds.
pub const WINDOW_SECS: i64 = 60;
/// Number of shards (each behind its own mutex).
pub const SHARDS: usize = 32;
/// Keys one shard holds at most.
pub const KEYS_PER_SHARD: usize = 2048;
/// Characters of a claimed principal kept for audit rows and logs (A25).
pub const MAX_PRINCIPAL_CHARS: usize = 128;

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

/// What the limiter says about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under every limit: answer 401 and audit the failure.
    Counted,
    /// Over a limit (or the key table is full): answer 429 with this `Retry-After`; the failure
    /// is counted into its key's summary, not audited on its own.
    Limited {
        /// seconds until the caller may try again
        retry_after: i64,
    },
}

/// One limited key's failures beyond its limit during one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// the claimed principal (truncated), `None` for the per-address key
    pub principal: Option<String>,
    /// client address
    pub addr: String,
    /// failures refused with 429 and not audited one by one
    pub count: u64,
}

/// Who a limited key is, kept only while it is limited.
#[derive(Debug)]
struct Who {
    principal: Option<String>,
    addr: String,
}

#[derive(Debug)]
struct Slot {
    window_start: i64,
    failures: u32,
    /// failures answered 429 in this window, not yet summarized
    suppressed: u64,
    /// set while the key is (or was, in this window) over its limit
    who: Option<Box<Who>>,
    /// which queue entry is the live one (lazy deletion)
    stamp: u64,
}

impl Slot {
    fn limited(&self) -> bool {
        self.who.is_some()
    }

    fn window_over(&self, now: i64) -> bool {
        now - self.window_start >= WINDOW_SECS
    }

    /// The summary of this slot's window, if it refused anything.
    fn take_summary(&mut self) -> Option<Summary> {
        let who = self.who.as_ref()?;
        let count = std::mem::take(&mut self.suppressed);
        (count > 0).then(|| Summary {
            principal: who.principal.clone(),
            addr: who.addr.clone(),
            count,
        })
    }
}

#[derive(Debug, Default)]
struct Shard {
    slots: HashMap<u64, Slot>,
    /// keys not limited, oldest first (entries whose stamp no longer matches are stale)
    fresh: VecDeque<(u64, u64)>,
    /// keys limited, in the order they became limited
    limited: VecDeque<(u64, u64)>,
    /// summaries of windows that ended while a failure reset or evicted their key
    pending: Vec<Summary>,
    next_stamp: u64,
}

impl Shard {
    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    fn live(&self, (key, stamp): (u64, u64), want_limited: bool) -> bool {
        self.slots.get(&key).is_some_and(|s| s.stamp == stamp && s.limited() == want_limited)
    }

    fn keep_pending(&mut self, summary: Option<Summary>, capacity: usize) {
        if let Some(s) = summary {
            if self.pending.len() < capacity {
                self.pending.push(s);
            }
        }
    }

    /// Makes room for one more key: evicts the oldest key that is not limited, else the oldest
    /// limited key whose window is over. False when every key is limited in a live window.
    fn make_room(&mut self, now: i64, capacity: usize) -> bool {
        while let Some(front) = self.fresh.pop_front() {
            if self.live(front, false) {
                self.slots.remove(&front.0);
                return true;
            }
        }
        while let Some(&front) = self.limited.front() {
            if !self.live(front, true) {
                self.limited.pop_front();
                continue;
            }
            let over = self.slots.get(&front.0).is_some_and(|s| s.window_over(now));
            if !over {
                return false;
            }
            self.limited.pop_front();
            let summary = self.slots.remove(&front.0).and_then(|mut s| s.take_summary());
            self.keep_pending(summary, capacity);
            return true;
        }
        false
    }

    /// Drops stale queue entries once they outnumber live keys (amortized O(1)).
    fn compact(&mut self, capacity: usize) {
        if self.fresh.len() + self.limited.len() > 2 * capacity + 16 {
            let slots = &self.slots;
            let live = |(k, st): &(u64, u64), lim: bool| {
                slots.get(k).is_some_and(|s| s.stamp == *st && s.limited() == lim)
            };
            self.fresh.retain(|e| live(e, false));
            self.limited.retain(|e| live(e, true));
        }
    }

    /// Counts one failure of `key`; `who` names it should it become limited.
    fn fail(
        &mut self,
        key: u64,
        limit: u32,
        who: impl FnOnce() -> Who,
        now: i64,
        capacity: usize,
    ) -> Verdict {
        if !self.slots.contains_key(&key) && self.slots.len() >= capacity {
            let room = self.make_room(now, capacity);
            if !room {
                return Verdict::Limited { retry_after: self.first_limited_end(now) };
            }
        }
        let stamp = self.stamp();
        let mut requeue = None;
        let mut summary = None;
        let slot = match self.slots.entry(key) {
            MapEntry::Vacant(v) => {
                requeue = Some(false);
                v.insert(Slot { window_start: now, failures: 0, suppressed: 0, who: None, stamp })
            }
            MapEntry::Occupied(o) => o.into_mut(),
        };
        if slot.window_over(now) {
            summary = slot.take_summary();
            if slot.who.take().is_some() {
                slot.stamp = stamp;
                requeue = Some(false);
            }
            slot.window_start = now;
            slot.failures = 0;
        }
        slot.failures = slot.failures.saturating_add(1);
        let verdict = if slot.failures > limit {
            if slot.who.is_none() {
                slot.who = Some(Box::new(who()));
                slot.stamp = stamp;
                requeue = Some(true);
            }
            slot.suppressed += 1;
            Verdict::Limited { retry_after: (slot.window_start + WINDOW_SECS - now).max(1) }
        } else {
            Verdict::Counted
        };
        match requeue {
            Some(false) => self.fresh.push_back((key, stamp)),
            Some(true) => self.limited.push_back((key, stamp)),
            None => {}
        }
        self.keep_pending(summary, capacity);
        self.compact(capacity);
        verdict
    }

    /// Whether `key` is limited in a live window; its `Retry-After` if so.
    fn limited_now(&self, key: u64, now: i64) -> Option<i64> {
        let slot = self.slots.get(&key)?;
        (slot.limited() && !slot.window_over(now))
            .then(|| (slot.window_start + WINDOW_SECS - now).max(1))
    }

    /// [`Shard::limited_now`], counting one more refusal when limited.
    fn count_if_limited(&mut self, key: u64, now: i64) -> Option<i64> {
        let retry_after = self.limited_now(key, now)?;
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.suppressed += 1;
        }
        Some(retry_after)
    }

    /// Seconds until the first limited key's window ends (the `Retry-After` of a full shard).
    fn first_limited_end(&self, now: i64) -> i64 {
        self.limited
            .iter()
            .filter_map(|(k, _)| self.slots.get(k))
            .filter(|s| s.limited())
            .map(|s| s.window_start + WINDOW_SECS - now)
            .next()
            .unwrap_or(WINDOW_SECS)
            .clamp(1, WINDOW_SECS)
    }

    /// Summaries of windows that are over (all windows with `all`).
    fn summaries(&mut self, now: i64, all: bool, out: &mut Vec<Summary>) {
        out.append(&mut self.pending);
        for (k, _) in &self.limited {
            if let Some(slot) = self.slots.get_mut(k) {
                if all || slot.window_over(now) {
                    out.extend(slot.take_summary());
                }
            }
        }
    }
}

/// The limiter.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: Limits,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    keys_per_shard: usize,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// Which counter a failure lands on.
#[derive(Hash)]
enum Key<'a> {
    Address(&'a str),
    Pair(&'a str, &'a str),
}

impl FailureLimiter {
    /// A limiter with `limits` and the default table size ([`SHARDS`] × [`KEYS_PER_SHARD`]).
    pub fn new(limits: Limits) -> Self {
        Self::with_table(limits, SHARDS, KEYS_PER_SHARD)
    }

    /// A limiter of `shards` shards holding at most `keys_per_shard` keys each.
    pub fn with_table(limits: Limits, shards: usize, keys_per_shard: usize) -> Self {
        let shards = (0..shards.max(1)).map(|_| Mutex::new(Shard::default())).collect();
        Self { limits, hasher: RandomState::new(), shards, keys_per_shard: keys_per_shard.max(1) }
    }

    /// Most keys the limiter holds.
    pub fn capacity(&self) -> usize {
        self.shards.len() * self.keys_per_shard
    }

    /// Keys held now (for tests and `/metrics`-style inspection; locks every shard in turn).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn locate(&self, key: &Key<'_>) -> (u64, &Mutex<Shard>) {
        let h = self.hasher.hash_one(key);
        // The high bits pick the shard; the whole hash is the key inside it.
        let shard = ((h >> 32) as usize) % self.shards.len();
        (h, &self.shards[shard])
    }

    /// [`FailureLimiter::record`] as `Some(retry_after)` when limited.
    pub fn fail(&self, principal: Option<&str>, addr: &str, now: i64) -> Option<i64> {
        match self.record(principal, addr, now) {
            Verdict::Limited { retry_after } => Some(retry_after),
            Verdict::Counted => None,
        }
    }

    /// Records one failure. Requests without credentials (`principal` None) count only toward
    /// the per-address limit (API.md A23). Once the address is limited its failures count there
    /// only, so one address cannot fill the table with pair keys.
    pub fn record(&self, principal: Option<&str>, addr: &str, now: i64) -> Verdict {
        let capacity = self.keys_per_shard;
        let (key, shard) = self.locate(&Key::Address(addr));
        let who = || Who { principal: None, addr: addr.to_owned() };
        let by_addr = lock(shard).fail(key, self.limits.per_address, who, now, capacity);
        if matches!(by_addr, Verdict::Limited { .. }) {
            return by_addr;
        }
        let Some(principal) = principal else { return by_addr };
        let principal = truncate_chars(principal, MAX_PRINCIPAL_CHARS);
        let (key, shard) = self.locate(&Key::Pair(principal, addr));
        let who = || Who { principal: Some(principal.to_owned()), addr: addr.to_owned() };
        let limit = self.limits.per_principal_address;
        lock(shard).fail(key, limit, who, now, capacity)
    }

    /// Read-only: `Some(retry_after)` when the address, or the (principal, address) pair, is
    /// limited now. Lets a caller skip expensive work (password hashing) for a request that
    /// would be refused whatever its credential: only logins use it (their check is the
    /// expensive part, API.md A30).
    pub fn is_limited(&self, principal: Option<&str>, addr: &str, now: i64) -> Option<i64> {
        self.first_limited(principal, addr, |shard, key| shard.limited_now(key, now))
    }

    /// Like [`FailureLimiter::is_limited`], and counts the refused request into the limited
    /// key's summary (a login refused before its password was checked).
    pub fn refuse_if_limited(&self, principal: Option<&str>, addr: &str, now: i64) -> Option<i64> {
        self.first_limited(principal, addr, |shard, key| shard.count_if_limited(key, now))
    }

    /// `check` on the address key, then on the pair key; the first `Some`.
    fn first_limited(
        &self,
        principal: Option<&str>,
        addr: &str,
        check: impl Fn(&mut Shard, u64) -> Option<i64>,
    ) -> Option<i64> {
        let (key, shard) = self.locate(&Key::Address(addr));
        if let Some(r) = check(&mut lock(shard), key) {
            return Some(r);
        }
        let principal = truncate_chars(principal?, MAX_PRINCIPAL_CHARS);
        let (key, shard) = self.locate(&Key::Pair(principal, addr));
        let limited = check(&mut lock(shard), key);
        limited
    }

    /// Summaries of every window that is over, each handed out once.
    pub fn due_summaries(&self, now: i64) -> Vec<Summary> {
        self.collect(now, false)
    }

    /// Summaries of every window, over or not (at shutdown).
    pub fn drain_summaries(&self, now: i64) -> Vec<Summary> {
        self.collect(now, true)
    }

    fn collect(&self, now: i64, all: bool) -> Vec<Summary> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            lock(shard).summaries(now, all, &mut out);
        }
        out
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    match shard.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The first `max` characters of `s` (never splits a character).
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(per_pair: u32, per_addr: u32, keys: usize) -> FailureLimiter {
        FailureLimiter::with_table(
            Limits { per_principal_address: per_pair, per_address: per_addr },
            1,
            keys,
        )
    }

    fn limited(v: Verdict) -> Option<i64> {
        match v {
            Verdict::Limited { retry_after } => Some(retry_after),
            Verdict::Counted => None,
        }
    }

    #[test]
    fn limits_per_pair_and_per_address_and_resets_after_a_window() {
        let l = FailureLimiter::new(Limits { per_principal_address: 3, per_address: 5 });
        for _ in 0..3 {
            assert_eq!(l.record(Some("owner"), "10.0.0.1", 100), Verdict::Counted);
        }
        assert_eq!(limited(l.record(Some("owner"), "10.0.0.1", 110)), Some(50));
        // Another address failing as owner is not affected by the first one.
        assert_eq!(l.record(Some("owner"), "10.0.0.2", 110), Verdict::Counted);
        // Per-address limit catches rotating principal names.
        assert_eq!(l.record(Some("a"), "10.0.0.1", 111), Verdict::Counted, "5th from the address");
        assert_eq!(limited(l.record(Some("b"), "10.0.0.1", 111)), Some(49), "6th is over");
        assert_eq!(l.record(Some("owner"), "10.0.0.1", 161), Verdict::Counted, "new window");
    }

    #[test]
    fn is_limited_reads_without_counting() {
        let l = small(2, 100, 16);
        for _ in 0..10 {
            assert_eq!(l.is_limited(Some("u"), "a", 0), None);
        }
        l.record(Some("u"), "a", 0);
        l.record(Some("u"), "a", 0);
        assert_eq!(l.is_limited(Some("u"), "a", 0), None, "two failures are within the limit");
        assert!(limited(l.record(Some("u"), "a", 0)).is_some());
        assert_eq!(l.is_limited(Some("u"), "a", 10), Some(50));
        assert_eq!(l.is_limited(Some("other"), "a", 10), None, "other principals are not");
        assert_eq!(l.is_limited(Some("u"), "a", 60), None, "the window is over");
    }

    #[test]
    fn refusing_a_limited_caller_counts_into_its_summary() {
        let l = small(0, 100, 16);
        assert_eq!(l.refuse_if_limited(Some("u"), "a", 0), None, "not limited: not counted");
        assert!(limited(l.record(Some("u"), "a", 0)).is_some());
        assert_eq!(l.refuse_if_limited(Some("u"), "a", 1), Some(59));
        assert_eq!(l.drain_summaries(2)[0].count, 2);
    }

    #[test]
    fn the_table_never_holds_more_than_its_capacity() {
        let l = FailureLimiter::with_table(Limits::default(), 4, 8);
        for i in 0..10_000 {
            l.record(Some(&format!("p{i}")), &format!("10.0.{}.{}", i / 256, i % 256), 0);
        }
        assert!(l.len() <= 32, "{} keys", l.len());
        assert_eq!(l.capacity(), 32);
    }

    #[test]
    fn a_full_table_evicts_its_oldest_key_that_is_not_limited() {
        let l = small(1, 1000, 4);
        // "held" becomes limited; then fill the table with three more keys.
        l.record(Some("held"), "x", 0);
        assert!(limited(l.record(Some("held"), "x", 0)).is_some());
        // The address key of "x" and the pair take two slots; two more addresses fill it.
        l.record(None, "y", 1);
        l.record(None, "z", 2);
        assert_eq!(l.len(), 4);
        // A new key evicts the oldest unlimited one (the address "x"), never the limited pair.
        l.record(None, "w", 3);
        assert_eq!(l.len(), 4);
        assert!(l.is_limited(Some("held"), "x", 3).is_some(), "limited key kept");
    }

    #[test]
    fn a_table_full_of_limited_keys_refuses_new_keys_until_their_windows_end() {
        let l = small(1000, 1, 2);
        for addr in ["a", "b"] {
            l.record(None, addr, 0);
            assert!(limited(l.record(None, addr, 0)).is_some());
        }
        // Only limited keys remain: a new key is refused, not admitted by evicting one.
        assert_eq!(limited(l.record(None, "c", 10)), Some(50));
        assert!(l.is_limited(None, "a", 10).is_some());
        assert!(l.is_limited(None, "b", 10).is_some());
        // After the windows end the new key gets in.
        assert_eq!(l.record(None, "c", 61), Verdict::Counted);
    }

    #[test]
    fn refusals_while_limited_become_one_summary_per_key_and_window() {
        let l = small(2, 1000, 64);
        for _ in 0..2 {
            assert_eq!(l.record(Some("mallory"), "10.0.0.9", 0), Verdict::Counted);
        }
        for t in 0..40 {
            assert!(limited(l.record(Some("mallory"), "10.0.0.9", t)).is_some());
        }
        assert!(l.due_summaries(59).is_empty(), "the window is still open");
        let due = l.due_summaries(60);
        assert_eq!(
            due,
            vec![Summary { principal: Some("mallory".into()), addr: "10.0.0.9".into(), count: 40 }]
        );
        assert!(l.due_summaries(61).is_empty(), "handed out once");
        // A new window counts afresh; its refusals are summarized at shutdown.
        for _ in 0..5 {
            l.record(Some("mallory"), "10.0.0.9", 70);
        }
        let at_shutdown = l.drain_summaries(71);
        assert_eq!(at_shutdown.len(), 1);
        assert_eq!(at_shutdown[0].count, 3);
    }

    #[test]
    fn a_window_reset_by_a_new_failure_keeps_the_old_summary() {
        let l = small(1, 1000, 64);
        l.record(Some("p"), "a", 0);
        l.record(Some("p"), "a", 0);
        l.record(Some("p"), "a", 0);
        // No flush ran; the next failure opens a new window.
        assert_eq!(l.record(Some("p"), "a", 100), Verdict::Counted);
        let due = l.due_summaries(100);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 2);
    }

    #[test]
    fn long_principals_are_truncated_to_128_characters_on_a_character_boundary() {
        let l = small(0, 1000, 64);
        let long = "é".repeat(300);
        assert!(limited(l.record(Some(&long), "a", 0)).is_some());
        let s = l.drain_summaries(0);
        assert_eq!(s[0].principal.as_deref().map(|p| p.chars().count()), Some(128));
        assert_eq!(truncate_chars("abc", 2), "ab");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }

    #[test]
    fn a_failure_costs_about_the_same_with_a_full_table() {
        // O(1): the 100,000 failures after the table is full cost no more per failure than
        // the first ones (generous bound; this is a regression guard, not a benchmark).
        let l = FailureLimiter::with_table(Limits::default(), 4, 1024);
        let run = |from: usize| {
            let start = std::time::Instant::now();
            for i in from..from + 20_000 {
                l.record(Some(&format!("p{i}")), &format!("a{i}"), 0);
            }
            start.elapsed()
        };
        let _fill = run(0);
        let first = run(1_000_000);
        let later = run(2_000_000);
        assert!(later < first * 20 + std::time::Duration::from_millis(200), "{first:?} {later:?}");
    }

    #[test]
    fn shards_are_used_evenly_enough() {
        let l = FailureLimiter::with_table(Limits::default(), 8, 100_000);
        for i in 0..8_000 {
            l.record(None, &format!("addr{i}"), 0);
        }
        for shard in l.shards.iter() {
            let n = lock(shard).slots.len();
            assert!((500..1500).contains(&n), "{n}");
        }
    }

    /// Cost per failure with a full table under 8 threads, and per valid caller's check:
    /// `cargo test -p service --release -- --ignored limiter_cost --nocapture`.
    #[test]
    #[ignore = "measurement, run by hand"]
    #[allow(clippy::print_stdout)]
    fn limiter_cost_under_eight_attackers() {
        let l = std::sync::Arc::new(FailureLimiter::default());
        let per_thread = 200_000;
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        l.record(
                            Some(&format!("name{t}-{i}")),
                            &format!("10.{t}.{}.{}", i / 250 % 250, i % 250),
                            0,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = started.elapsed();
        println!(
            "{} failures from 8 threads in {total:?}: {:?} per failure (wall), {} keys held of {}",
            8 * per_thread,
            total / (8 * per_thread),
            l.len(),
            l.capacity()
        );
    }
}
