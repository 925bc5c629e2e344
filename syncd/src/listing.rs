//! Existence checks by listing, for endpoints that do not honour create-only writes
//! (`If-None-Match: *`): the pure policy and the cache, no I/O.
//!
//! Without create-only writes the daemon must look before it writes, so that it never
//! clobbers different content under a key. One HeadObject per file does that, but on a
//! backlog of small files it is a third of all requests. Instead, when a key directory
//! is *hot* (many checks in a short window), one ListObjectsV2 of that directory answers
//! every check in it for `upload.listing_max_age_secs`: a key in the listing still gets
//! its HeadObject (its content is compared), a key not in it goes straight to the PUT.
//!
//! Neither check is atomic — only `If-None-Match` is. A HeadObject answers for the moment
//! it was sent; a listing for the moment it was taken, at most `listing_max_age_secs`
//! before the check it answers. Retries and resumed uploads always use HeadObject.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `upload.existence_check`: how the daemon looks for an object before writing it, on
/// endpoints without create-only writes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExistenceCheck {
    /// HeadObject per file; a listing for directories with many checks at once.
    #[default]
    Auto,
    /// HeadObject per file, always (no `s3:ListBucket` needed).
    Head,
    /// A listing for every check (HeadObject only for keys found in it).
    Listing,
}

/// Checks in one window before a listing is considered at all.
pub const MIN_CHECKS: u32 = 8;
/// Checks per page of the last listing that a listing must save to be worth it.
pub const CHECKS_PER_PAGE: u32 = 4;
/// Pages (of 1,000 keys) beyond which a directory is checked by HeadObject instead.
pub const MAX_PAGES: u32 = 16;
/// How long a directory too big or too slow to list is left to HeadObject.
const HEAD_FOR: Duration = Duration::from_secs(600);
/// Directories without a check for this long are forgotten.
const IDLE_FOR: Duration = Duration::from_secs(60);

/// The directory part of a key, with its trailing `/` (`""` at the bucket's root): the
/// prefix listed, with `/` as the delimiter, so only that directory's own objects.
pub fn key_dir(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

/// Whether a listing of `pages` pages is cheaper than the HeadObject requests it replaces,
/// judged from the checks seen in the current window.
pub fn worth_listing(checks: u32, pages: u32) -> bool {
    checks >= MIN_CHECKS && checks >= CHECKS_PER_PAGE * pages.max(1)
}

/// What to do for one existence check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A fresh listing answers: whether the key is in it.
    Answer(bool),
    /// List the key's directory (`key_dir`), then ask again.
    List(String),
    /// Send a HeadObject.
    Head,
}

#[derive(Debug, Default)]
struct Dir {
    window_start: Option<Instant>,
    checks: u32,
    last_check: Option<Instant>,
    listed: Option<(Instant, HashSet<String>)>,
    pages: u32,
    head_until: Option<Instant>,
}

/// The listings taken, per key directory, and the checks counted against them.
#[derive(Debug)]
pub struct Listings {
    mode: ExistenceCheck,
    max_age: Duration,
    dirs: Mutex<HashMap<String, Dir>>,
    /// Listing refused (no `s3:ListBucket`): HeadObject from now on.
    disabled: std::sync::atomic::AtomicBool,
}

impl Listings {
    pub fn new(mode: ExistenceCheck, max_age: Duration) -> Listings {
        Listings {
            mode,
            max_age,
            dirs: Mutex::new(HashMap::new()),
            disabled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Plan the existence check of `key` at `now`. `count` says whether this is a new
    /// check (counted towards the directory's heat) or a second look after a listing.
    pub fn plan(&self, key: &str, now: Instant, count: bool) -> Plan {
        if self.mode == ExistenceCheck::Head || self.disabled.load(std::sync::atomic::Ordering::Relaxed) {
            return Plan::Head;
        }
        let dir = key_dir(key);
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let d = dirs.entry(dir.to_string()).or_default();
        d.last_check = Some(now);
        if let Some((at, keys)) = &d.listed
            && now.saturating_duration_since(*at) <= self.max_age
        {
            return Plan::Answer(keys.contains(key));
        }
        if d.head_until.is_some_and(|t| now < t) {
            return Plan::Head;
        }
        if self.mode == ExistenceCheck::Listing {
            return Plan::List(dir.to_string());
        }
        if count {
            if d.window_start
                .is_none_or(|s| now.saturating_duration_since(s) > self.max_age)
            {
                d.window_start = Some(now);
                d.checks = 0;
            }
            d.checks += 1;
        }
        if worth_listing(d.checks, d.pages) {
            Plan::List(dir.to_string())
        } else {
            Plan::Head
        }
    }

    /// A listing of `dir` taken at `at` (the moment its first page was asked for).
    pub fn store(&self, dir: &str, keys: HashSet<String>, pages: u32, at: Instant) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.retain(|k, d| {
            k == dir
                || d.last_check
                    .is_some_and(|t| at.saturating_duration_since(t) < IDLE_FOR)
        });
        let d = dirs.entry(dir.to_string()).or_default();
        d.listed = Some((at, keys));
        d.pages = pages;
        d.checks = 0;
        d.window_start = Some(at);
    }

    /// Whether a listing that took `took` is too slow to be worth taking: it must answer
    /// checks for at least half of its freshness.
    pub fn too_slow(&self, took: Duration) -> bool {
        took > self.max_age / 2
    }

    /// `dir` has more than [`MAX_PAGES`] pages, or lists too slowly: HeadObject there for a
    /// while.
    pub fn leave_to_head(&self, dir: &str, now: Instant) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let d = dirs.entry(dir.to_string()).or_default();
        d.listed = None;
        d.pages = MAX_PAGES;
        d.head_until = Some(now + HEAD_FOR);
    }

    /// The endpoint refuses listings: HeadObject from now on. True the first time.
    pub fn disable(&self) -> bool {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        !self.disabled.swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> HashSet<String> {
        ks.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn key_dirs() {
        assert_eq!(key_dir("host/cam/2026-11-30/c1.mkv"), "host/cam/2026-11-30/");
        assert_eq!(key_dir("c1.mkv"), "");
        assert_eq!(key_dir("a/"), "a/");
    }

    #[test]
    fn listing_pays_only_for_enough_checks() {
        assert!(!worth_listing(MIN_CHECKS - 1, 0));
        assert!(worth_listing(MIN_CHECKS, 0));
        assert!(worth_listing(MIN_CHECKS, 1));
        // A directory of 5 pages needs 20 checks in the window.
        assert!(!worth_listing(19, 5));
        assert!(worth_listing(20, 5));
    }

    #[test]
    fn a_hot_directory_is_listed_and_the_listing_answers_until_it_is_old() {
        let l = Listings::new(ExistenceCheck::Auto, Duration::from_secs(2));
        let t0 = Instant::now();
        // A trickle: HeadObject.
        for i in 0..MIN_CHECKS - 1 {
            assert_eq!(l.plan(&format!("d/{i}"), t0, true), Plan::Head);
        }
        // The eighth check within the window asks for a listing.
        assert_eq!(l.plan("d/x", t0, true), Plan::List("d/".into()));
        l.store("d/", keys(&["d/x", "d/y"]), 1, t0);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(l.plan("d/x", t1, false), Plan::Answer(true));
        assert_eq!(l.plan("d/new", t1, true), Plan::Answer(false));
        // Another directory is not answered by it.
        assert_eq!(l.plan("e/x", t1, true), Plan::Head);
        // Too old: counted afresh.
        let t2 = t0 + Duration::from_millis(2500);
        assert_eq!(l.plan("d/new", t2, true), Plan::Head);
    }

    #[test]
    fn checks_outside_the_window_do_not_add_up() {
        let l = Listings::new(ExistenceCheck::Auto, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..20u64 {
            // One check every 0.6 s: never 8 in a second.
            let t = t0 + Duration::from_millis(600 * i);
            assert_eq!(l.plan("d/k", t, true), Plan::Head, "check {i}");
        }
    }

    #[test]
    fn modes_and_refusals() {
        let t = Instant::now();
        let head = Listings::new(ExistenceCheck::Head, Duration::from_secs(2));
        for _ in 0..100 {
            assert_eq!(head.plan("d/k", t, true), Plan::Head);
        }
        let always = Listings::new(ExistenceCheck::Listing, Duration::from_secs(2));
        assert_eq!(always.plan("d/k", t, true), Plan::List("d/".into()));
        always.store("d/", keys(&[]), 1, t);
        assert_eq!(always.plan("d/k", t, true), Plan::Answer(false));
        assert!(always.disable(), "the first refusal turns listings off");
        assert!(!always.disable());
        assert_eq!(always.plan("d/k", t, true), Plan::Head);
    }

    #[test]
    fn big_directories_are_left_to_head_requests() {
        let l = Listings::new(ExistenceCheck::Listing, Duration::from_secs(2));
        let t = Instant::now();
        l.leave_to_head("d/", t);
        assert_eq!(l.plan("d/k", t, true), Plan::Head);
        assert_eq!(
            l.plan("d/k", t + HEAD_FOR + Duration::from_secs(1), true),
            Plan::List("d/".into())
        );
        // Auto mode weighs the pages of the last listing: 16 pages need 64 checks.
        let a = Listings::new(ExistenceCheck::Auto, Duration::from_secs(2));
        a.store("d/", keys(&[]), MAX_PAGES, t);
        let later = t + Duration::from_secs(3);
        let mut plans = (0..CHECKS_PER_PAGE * MAX_PAGES).map(|_| a.plan("d/k", later, true));
        assert!(
            plans
                .by_ref()
                .take((CHECKS_PER_PAGE * MAX_PAGES - 1) as usize)
                .all(|p| p == Plan::Head)
        );
        assert_eq!(plans.next(), Some(Plan::List("d/".into())));
    }

    #[test]
    fn slow_listings_are_not_worth_taking() {
        let l = Listings::new(ExistenceCheck::Auto, Duration::from_secs(2));
        assert!(!l.too_slow(Duration::from_millis(900)));
        assert!(l.too_slow(Duration::from_millis(1100)));
    }

    #[test]
    fn idle_directories_are_forgotten() {
        let l = Listings::new(ExistenceCheck::Listing, Duration::from_secs(2));
        let t = Instant::now();
        l.plan("old/k", t, true);
        l.store("old/", keys(&["old/k"]), 1, t);
        l.store("new/", keys(&[]), 1, t + IDLE_FOR + Duration::from_secs(1));
        assert_eq!(l.dirs.lock().unwrap().len(), 1);
    }
}
