//! One rate limit for every log line an attacker can cause (issue 12): bad SIP messages,
//! failed authentications, bans, connections over a cap, challenges over a source's rate,
//! refused identities, failed TLS handshakes. Sans-IO core ([`LogLimiter`], time passed in)
//! and a process-wide instance ([`allow`], [`flush`]) the transports and the gateway share.
//!
//! Per **kind** of line, in fixed windows ([`LogLimits::window`]): at most
//! [`LogLimits::per_kind`] lines, and at most [`LogLimits::per_source`] of them for one source
//! address, so one noisy source cannot hide the others. What is over a limit is counted, not
//! logged; when its window ends a single summary line says how many similar lines were
//! suppressed and from how many sources ([`Summary`]). The defaults keep fail2ban working: a
//! source gets up to 10 `SECURITY auth-failed` lines per 10 s, as many as the example jail's
//! `maxretry`, and the summary line does not match its filter.
//!
//! Bounded: a handful of kinds (each a `&'static str`), per window at most `per_kind` sources
//! tracked for the per-source limit and [`MAX_SOURCES_COUNTED`] distinct suppressed sources.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Distinct suppressed sources counted per kind and window (beyond: the count says "at least").
pub const MAX_SOURCES_COUNTED: usize = 1024;

/// Most kinds tracked (they are static strings of the code; more would be a bug: admitted).
const MAX_KINDS: usize = 32;

/// The limits of a [`LogLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The window the limits count over (and how often a summary is due at most).
    pub window: Duration,
    /// Lines of one kind per window.
    pub per_kind: u32,
    /// Lines of one kind per window from one source address.
    pub per_source: u32,
}

impl Default for LogLimits {
    /// 50 lines of a kind per 10 s, 10 of them per source (fail2ban's example jail counts 10
    /// failures in 60 s).
    fn default() -> Self {
        LogLimits {
            window: Duration::from_secs(10),
            per_kind: 50,
            per_source: 10,
        }
    }
}

/// "N similar suppressed": what one window of a kind did not log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The kind of line.
    pub kind: &'static str,
    /// Lines suppressed in the window.
    pub suppressed: u64,
    /// Distinct sources among them (at most [`MAX_SOURCES_COUNTED`]; lines without a source
    /// are not counted here).
    pub sources: usize,
    /// The window's length.
    pub window: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} similar suppressed: kind={} sources={}{} within {} s",
            self.suppressed,
            self.kind,
            self.sources,
            if self.sources >= MAX_SOURCES_COUNTED {
                "+"
            } else {
                ""
            },
            self.window.as_secs_f64()
        )
    }
}

#[derive(Debug)]
struct Window {
    kind: &'static str,
    start: Instant,
    logged: u32,
    by_source: HashMap<IpAddr, u32>,
    suppressed: u64,
    suppressed_sources: HashSet<IpAddr>,
}

impl Window {
    fn new(kind: &'static str, start: Instant) -> Self {
        Window {
            kind,
            start,
            logged: 0,
            by_source: HashMap::new(),
            suppressed: 0,
            suppressed_sources: HashSet::new(),
        }
    }
}

/// The limiter, sans-IO. Call [`admit`](Self::admit) before each line; log the
/// [`poll_summary`](Self::poll_summary) lines, at the latest at
/// [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct LogLimiter {
    limits: LogLimits,
    windows: Vec<Window>,
    /// Summaries of windows that ended, with the instant each ended.
    due: Vec<(Instant, Summary)>,
}

impl LogLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: LogLimits) -> Self {
        LogLimiter {
            limits,
            windows: Vec::new(),
            due: Vec::new(),
        }
    }

    /// Closes the windows that ended by `now`, queueing their summaries.
    fn roll(&mut self, now: Instant) {
        let window = self.limits.window;
        let due = &mut self.due;
        self.windows.retain(|w| {
            if now.saturating_duration_since(w.start) < window {
                return true;
            }
            if w.suppressed > 0 {
                due.push((
                    w.start + window,
                    Summary {
                        kind: w.kind,
                        suppressed: w.suppressed,
                        sources: w.suppressed_sources.len(),
                        window,
                    },
                ));
            }
            false
        });
    }

    /// Whether a line of `kind` (caused by `source`, if known) may be logged at `now`; if not,
    /// it is counted for the window's summary.
    pub fn admit(&mut self, kind: &'static str, source: Option<IpAddr>, now: Instant) -> bool {
        self.roll(now);
        let i = match self.windows.iter().position(|w| w.kind == kind) {
            Some(i) => i,
            None if self.windows.len() >= MAX_KINDS => return true,
            None => {
                self.windows.push(Window::new(kind, now));
                self.windows.len() - 1
            }
        };
        let Some(w) = self.windows.get_mut(i) else {
            return true;
        };
        let per_source = source.map_or(0, |ip| w.by_source.get(&ip).copied().unwrap_or(0));
        if w.logged < self.limits.per_kind && per_source < self.limits.per_source {
            w.logged += 1;
            if let Some(ip) = source {
                *w.by_source.entry(ip).or_default() += 1;
            }
            return true;
        }
        w.suppressed += 1;
        if let Some(ip) = source {
            if w.suppressed_sources.len() < MAX_SOURCES_COUNTED {
                w.suppressed_sources.insert(ip);
            }
        }
        false
    }

    /// The next summary due at `now` (a window that ended with lines suppressed).
    pub fn poll_summary(&mut self, now: Instant) -> Option<Summary> {
        self.roll(now);
        if self.due.is_empty() {
            None
        } else {
            Some(self.due.remove(0).1)
        }
    }

    /// When the next summary is due: the end of the earliest window with lines suppressed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ended = self.due.iter().map(|(at, _)| *at);
        self.windows
            .iter()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.start + self.limits.window)
            .chain(ended)
            .min()
    }
}

static GLOBAL: LazyLock<Mutex<LogLimiter>> =
    LazyLock::new(|| Mutex::new(LogLimiter::new(LogLimits::default())));

fn global() -> std::sync::MutexGuard<'static, LogLimiter> {
    GLOBAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn emit(l: &mut LogLimiter, now: Instant) {
    while let Some(s) = l.poll_summary(now) {
        tracing::warn!(target: "loglimit", "{s}");
    }
}

/// Woken when the process-wide limiter suppresses a line (see [`suppressed`]).
static SUPPRESSED: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// The process-wide limiter: whether a line of `kind` from `source` may be logged now (the
/// summaries that are due are logged first).
pub fn allow(kind: &'static str, source: Option<IpAddr>) -> bool {
    let now = Instant::now();
    let mut l = global();
    emit(&mut l, now);
    let admitted = l.admit(kind, source, now);
    if !admitted {
        SUPPRESSED.notify_one();
    }
    admitted
}

/// When the process-wide limiter next has a summary due ([`flush`] then logs it).
pub fn next_flush() -> Option<Instant> {
    global().poll_timeout()
}

/// Resolves once a line was suppressed since the last time it resolved: an event loop that
/// sleeps until [`next_flush`] re-reads it then (lines are suppressed on other tasks too).
pub async fn suppressed() {
    SUPPRESSED.notified().await
}

/// Logs the summaries that are due (call it periodically: a flood that stopped still gets
/// its summary).
pub fn flush() {
    let now = Instant::now();
    emit(&mut global(), now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, n]))
    }

    /// 10 s of flood in virtual time: the per-source and per-kind budgets, a summary per
    /// kind when its window ends (and none for a window with nothing suppressed), kinds
    /// independent of each other.
    #[test]
    fn repeated_lines_are_limited_and_summarised_in_virtual_time() {
        let limits = LogLimits {
            window: Duration::from_secs(10),
            per_kind: 5,
            per_source: 2,
        };
        let mut l = LogLimiter::new(limits);
        let t0 = Instant::now();
        // One source: 2 lines, then suppressed.
        let first: Vec<bool> = (0..6).map(|_| l.admit("auth-failed", ip(1), t0)).collect();
        assert_eq!(first, [true, true, false, false, false, false]);
        // Other sources still get their lines until the kind's budget (5) is spent.
        assert!(l.admit("auth-failed", ip(2), t0));
        assert!(l.admit("auth-failed", ip(2), t0));
        assert!(l.admit("auth-failed", ip(3), t0));
        assert!(!l.admit("auth-failed", ip(4), t0), "kind budget spent");
        // Another kind is not affected.
        assert!(l.admit("tls-handshake", ip(1), t0));
        assert_eq!(l.poll_summary(t0 + Duration::from_secs(9)), None);
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // The window ends: one summary, 5 lines from 2 sources.
        let s = l
            .poll_summary(t0 + Duration::from_secs(10))
            .expect("summary");
        assert_eq!(
            s,
            Summary {
                kind: "auth-failed",
                suppressed: 5,
                sources: 2,
                window: Duration::from_secs(10)
            }
        );
        assert_eq!(
            s.to_string(),
            "5 similar suppressed: kind=auth-failed sources=2 within 10 s"
        );
        assert_eq!(l.poll_summary(t0 + Duration::from_secs(10)), None);
        assert_eq!(l.poll_timeout(), None, "tls-handshake suppressed nothing");
        // A new window: the source may log again.
        assert!(l.admit("auth-failed", ip(1), t0 + Duration::from_secs(11)));
    }

    /// Lines without a source share the kind budget; the summary comes out through `admit`'s
    /// roll too (no periodic flush needed when lines keep coming).
    #[test]
    fn sourceless_lines_and_a_summary_on_the_next_line() {
        let mut l = LogLimiter::new(LogLimits {
            window: Duration::from_secs(1),
            per_kind: 3,
            per_source: 3,
        });
        let t0 = Instant::now();
        let n = (0..1000)
            .filter(|_| l.admit("bad-message", None, t0))
            .count();
        assert_eq!(n, 3);
        assert!(l.admit("bad-message", None, t0 + Duration::from_secs(1)));
        let s = l
            .poll_summary(t0 + Duration::from_secs(1))
            .expect("summary");
        assert_eq!((s.suppressed, s.sources), (997, 0));
    }

    /// The tables stay bounded under a flood from many sources.
    #[test]
    fn bounded_under_many_sources() {
        let mut l = LogLimiter::new(LogLimits::default());
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let src = IpAddr::from(i.to_be_bytes());
            l.admit("connection-cap", Some(src), t0);
        }
        let w = &l.windows[0];
        assert!(w.by_source.len() <= 50);
        assert_eq!(w.suppressed_sources.len(), MAX_SOURCES_COUNTED);
        let s = l
            .poll_summary(t0 + Duration::from_secs(10))
            .expect("summary");
        assert_eq!(s.suppressed, 100_000 - 50);
        assert!(s.to_string().contains("sources=1024+"), "{s}");
    }
}
