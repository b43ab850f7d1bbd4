//! Authentication defence, sans-IO (time passed in): what Kamailio's pike + ipban and
//! Asterisk's security events + fail2ban do, inside the gateway.
//!
//! * **Failures per source.** Every failed authentication (wrong password, unknown user,
//!   replayed or forged nonce, malformed credentials) from one IP is counted over
//!   `window`; at `max_failures_per_source` the IP is banned for `ban_time`: everything it
//!   sends is dropped unanswered (and counted) until the ban lapses.
//! * **Failures per user.** At `max_failures_per_user` failures for one user name (from any
//!   number of sources) the user is *guarded* for `ban_time`: from then on a single failure
//!   for that user bans its source at once. A source that never failed is not affected, so the
//!   real phone, answering with the right password from its own address, keeps registering
//!   and calling: a guessing campaign never locks the user out.
//! * **Challenges per source.** Unauthenticated requests draw a challenge; a source drawing
//!   more than `challenges_per_sec` (token bucket, burst `challenge_burst`) gets no answer
//!   for the excess (counted), so the gateway cannot be used to flood a spoofed address.
//!
//! Every table is bounded (`max_tracked` entries): when full, entries whose window lapsed are
//! dropped first, then the oldest.
//!
//! Each failure and each ban is a [`SecurityEvent`] whose [`std::fmt::Display`] is the
//! documented, fail2ban-ready log line (docs/SECURITY.md):
//! `SECURITY auth-failed src=<ip> port=<port> user=<user> method=<M> reason=<reason>`.

pub mod identity;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Settings (`[security]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Failures are counted over this window.
    pub window: Duration,
    /// Failures from one IP within `window` that ban it (0: never).
    pub max_failures_per_source: u32,
    /// Failures for one user within `window` that guard it (0: never).
    pub max_failures_per_user: u32,
    /// How long a ban (and a user's guard) lasts.
    pub ban_time: Duration,
    /// Challenges per second one source may draw (0: unlimited).
    pub challenges_per_sec: u32,
    /// Burst of challenges above the rate.
    pub challenge_burst: u32,
    /// Addresses never banned nor rate-limited (trunks, monitoring).
    pub never_ban: Vec<IpAddr>,
    /// Most entries per table (sources, users, challenge buckets).
    pub max_tracked: usize,
}

impl Default for SecurityConfig {
    /// 10 failures per source or 20 per user within 60 s; bans of 10 minutes; 200 challenges
    /// per second per source (burst 400); 65,536 tracked entries per table.
    fn default() -> Self {
        SecurityConfig {
            window: Duration::from_secs(60),
            max_failures_per_source: 10,
            max_failures_per_user: 20,
            ban_time: Duration::from_secs(600),
            challenges_per_sec: 200,
            challenge_burst: 400,
            never_ban: Vec::new(),
            max_tracked: 65_536,
        }
    }
}

/// Why an authentication failed (the `reason=` of the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The digest did not match a known user's credentials.
    WrongPassword,
    /// No such user (logged as such; the answer on the wire is the same as a wrong password).
    UnknownUser,
    /// A nonce-count not above the last one accepted for that nonce.
    Replay,
    /// A nonce (or opaque) we did not issue.
    BadNonce,
    /// Credentials that do not parse, or miss a field.
    Malformed,
    /// Authenticated, but presented an identity it may not (From / P-Asserted-Identity).
    IdentityMismatch,
    /// Authenticated as a user whose AOR is not the one registered (REGISTER 403).
    WrongAor,
}

impl FailReason {
    /// The token on the log line.
    pub fn token(self) -> &'static str {
        match self {
            FailReason::WrongPassword => "wrong-password",
            FailReason::UnknownUser => "unknown-user",
            FailReason::Replay => "replay",
            FailReason::BadNonce => "bad-nonce",
            FailReason::Malformed => "malformed",
            FailReason::IdentityMismatch => "identity-mismatch",
            FailReason::WrongAor => "wrong-aor",
        }
    }
}

/// Something worth a security log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// One failed authentication.
    AuthFailed {
        /// Source address.
        ip: IpAddr,
        /// Source port.
        port: u16,
        /// The user name it claimed (escaped, bounded), `-` if none.
        user: String,
        /// The request method.
        method: String,
        /// Why.
        reason: FailReason,
    },
    /// A source was banned.
    Banned {
        /// Source address.
        ip: IpAddr,
        /// Ban length.
        secs: u64,
        /// Failures counted from it in the window.
        failures: u32,
        /// `failures` (per-source count) or `guarded-user` (a guarded user's failure).
        why: &'static str,
        /// The user of the failure that triggered the ban.
        user: String,
    },
    /// A user is guarded: its next failure from any source bans that source.
    UserGuarded {
        /// The user.
        user: String,
        /// Failures for it in the window.
        failures: u32,
    },
}

impl std::fmt::Display for SecurityEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecurityEvent::AuthFailed {
                ip,
                port,
                user,
                method,
                reason,
            } => write!(
                f,
                "SECURITY auth-failed src={ip} port={port} user={user} method={method} reason={}",
                reason.token()
            ),
            SecurityEvent::Banned {
                ip,
                secs,
                failures,
                why,
                user,
            } => write!(
                f,
                "SECURITY banned src={ip} secs={secs} failures={failures} why={why} user={user}"
            ),
            SecurityEvent::UserGuarded { user, failures } => {
                write!(f, "SECURITY user-guarded user={user} failures={failures}")
            }
        }
    }
}

/// A user name as it may appear on a log line: printable ASCII other than space, `"`, `\`
/// and `=` kept, everything else `%XX`-escaped, at most 64 bytes of output (`…` marks a cut);
/// empty is `-`.
pub fn log_user(user: &str) -> String {
    if user.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for b in user.bytes() {
        if out.len() >= 64 {
            out.push('…');
            break;
        }
        if b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One entry of the ban list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The banned address.
    pub ip: IpAddr,
    /// Until when.
    pub until: Instant,
    /// Failures that led to it.
    pub failures: u32,
    /// `failures` or `guarded-user`.
    pub why: &'static str,
    /// The user of the last failure.
    pub user: String,
    /// Requests dropped since the ban began.
    pub dropped: u64,
}

/// Counters, for the status API and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityStats {
    /// Failed authentications seen.
    pub failures: u64,
    /// Bans imposed.
    pub bans: u64,
    /// Requests dropped because their source was banned.
    pub dropped_banned: u64,
    /// Challenges not sent (over the per-source rate).
    pub challenges_dropped: u64,
    /// Entries evicted from a full table.
    pub evicted: u64,
}

#[derive(Debug, Clone)]
struct Count {
    start: Instant,
    n: u32,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The defence state: failures, bans, guarded users, challenge buckets.
#[derive(Debug)]
pub struct Guard {
    cfg: SecurityConfig,
    sources: HashMap<IpAddr, Count>,
    users: HashMap<String, Count>,
    guarded: HashMap<String, Instant>,
    bans: HashMap<IpAddr, Ban>,
    buckets: HashMap<IpAddr, Bucket>,
    stats: SecurityStats,
}

impl Guard {
    /// Nothing counted, nobody banned.
    pub fn new(cfg: SecurityConfig) -> Self {
        Guard {
            cfg,
            sources: HashMap::new(),
            users: HashMap::new(),
            guarded: HashMap::new(),
            bans: HashMap::new(),
            buckets: HashMap::new(),
            stats: SecurityStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SecurityConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> SecurityStats {
        self.stats
    }

    /// Whether a message from `ip` is processed at all: false while `ip` is banned (counted as
    /// dropped).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.bans.get_mut(&ip) {
            None => true,
            Some(b) if b.until > now => {
                b.dropped += 1;
                self.stats.dropped_banned += 1;
                false
            }
            Some(_) => {
                self.bans.remove(&ip);
                true
            }
        }
    }

    /// Whether a challenge may be sent to `ip` now (its token bucket); false is counted.
    pub fn allow_challenge(&mut self, ip: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.cfg.challenges_per_sec);
        if rate <= 0.0 || self.cfg.never_ban.contains(&ip) {
            return true;
        }
        let burst = f64::from(self.cfg.challenge_burst.max(1));
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.cfg.max_tracked {
            let horizon = Duration::from_secs_f64(burst / rate);
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < horizon);
            evict_oldest(&mut self.buckets, self.cfg.max_tracked, |b| b.at);
            self.stats.evicted += 1;
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            self.stats.challenges_dropped += 1;
            false
        }
    }

    /// Records a failed authentication from `ip` claiming `user`; returns the events to log
    /// (the failure itself first, then a ban or a guard it caused).
    pub fn failed(
        &mut self,
        ip: IpAddr,
        port: u16,
        user: &str,
        method: &str,
        reason: FailReason,
        now: Instant,
    ) -> Vec<SecurityEvent> {
        self.stats.failures += 1;
        let user_log = log_user(user);
        let mut events = vec![SecurityEvent::AuthFailed {
            ip,
            port,
            user: user_log.clone(),
            method: log_user(method),
            reason,
        }];
        if self.cfg.never_ban.contains(&ip) {
            return events;
        }
        let window = self.cfg.window;
        let max = self.cfg.max_tracked;
        // Per user (bounded key: the escaped, cut name).
        let guarded = match self.guarded.get(&user_log) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.guarded.remove(&user_log);
                false
            }
            None => false,
        };
        let user_failures = bump(
            &mut self.users,
            user_log.clone(),
            now,
            window,
            max,
            &mut self.stats,
        );
        if !guarded
            && self.cfg.max_failures_per_user > 0
            && user_failures >= self.cfg.max_failures_per_user
        {
            if self.guarded.len() >= max {
                self.guarded.retain(|_, until| *until > now);
                evict_oldest(&mut self.guarded, max, |u| *u);
            }
            self.guarded
                .insert(user_log.clone(), now + self.cfg.ban_time);
            events.push(SecurityEvent::UserGuarded {
                user: user_log.clone(),
                failures: user_failures,
            });
        }
        // Per source.
        let source_failures = bump(&mut self.sources, ip, now, window, max, &mut self.stats);
        let why = if guarded {
            Some("guarded-user")
        } else if self.cfg.max_failures_per_source > 0
            && source_failures >= self.cfg.max_failures_per_source
        {
            Some("failures")
        } else {
            None
        };
        if let Some(why) = why {
            if self.ban(ip, source_failures, why, &user_log, now) {
                events.push(SecurityEvent::Banned {
                    ip,
                    secs: self.cfg.ban_time.as_secs(),
                    failures: source_failures,
                    why,
                    user: user_log,
                });
            }
        }
        events
    }

    fn ban(
        &mut self,
        ip: IpAddr,
        failures: u32,
        why: &'static str,
        user: &str,
        now: Instant,
    ) -> bool {
        if self.bans.get(&ip).is_some_and(|b| b.until > now) {
            return false;
        }
        if self.bans.len() >= self.cfg.max_tracked {
            self.bans.retain(|_, b| b.until > now);
            evict_oldest(&mut self.bans, self.cfg.max_tracked, |b| b.until);
        }
        self.stats.bans += 1;
        self.sources.remove(&ip);
        self.bans.insert(
            ip,
            Ban {
                ip,
                until: now + self.cfg.ban_time,
                failures,
                why,
                user: user.to_owned(),
                dropped: 0,
            },
        );
        true
    }

    /// The bans in force at `now`, soonest to lapse first.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .bans
            .values()
            .filter(|b| b.until > now)
            .cloned()
            .collect();
        v.sort_by_key(|b| (b.until, b.ip));
        v
    }

    /// Forgets lapsed bans, guards and counts (call now and then).
    pub fn expire(&mut self, now: Instant) {
        let window = self.cfg.window;
        self.bans.retain(|_, b| b.until > now);
        self.guarded.retain(|_, until| *until > now);
        self.sources
            .retain(|_, c| now.saturating_duration_since(c.start) < window);
        self.users
            .retain(|_, c| now.saturating_duration_since(c.start) < window);
        let rate = f64::from(self.cfg.challenges_per_sec.max(1));
        let horizon = Duration::from_secs_f64(f64::from(self.cfg.challenge_burst.max(1)) / rate);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < horizon);
    }
}

/// Counts one failure for `key` in its window (a new window when the last one lapsed);
/// returns the count.
fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Count>,
    key: K,
    now: Instant,
    window: Duration,
    max: usize,
    stats: &mut SecurityStats,
) -> u32 {
    if !map.contains_key(&key) && map.len() >= max {
        map.retain(|_, c| now.saturating_duration_since(c.start) < window);
        if map.len() >= max {
            evict_oldest(map, max, |c| c.start);
            stats.evicted += 1;
        }
    }
    let c = map.entry(key).or_insert(Count { start: now, n: 0 });
    if now.saturating_duration_since(c.start) >= window {
        c.start = now;
        c.n = 0;
    }
    c.n = c.n.saturating_add(1);
    c.n
}

/// Drops the oldest entries (by `age`) until `map` has room for one more below `max`: an
/// eighth of the table at once, so a full table is not scanned per insertion.
fn evict_oldest<K: std::hash::Hash + Eq + Clone, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    age: impl Fn(&V) -> Instant,
) {
    if map.len() < max {
        return;
    }
    let drop = (map.len() + 1 - max).max(max / 8).min(map.len());
    let mut by_age: Vec<(Instant, K)> = map.iter().map(|(k, v)| (age(v), k.clone())).collect();
    by_age.sort_by_key(|(t, _)| *t);
    for (_, k) in by_age.into_iter().take(drop) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests;
