//! The guard in virtual time.

use super::*;
use std::net::Ipv4Addr;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn cfg() -> SecurityConfig {
    SecurityConfig {
        window: Duration::from_secs(60),
        max_failures_per_source: 5,
        max_failures_per_user: 8,
        ban_time: Duration::from_secs(300),
        challenges_per_sec: 10,
        challenge_burst: 20,
        never_ban: vec![ip(99)],
        max_tracked: 1000,
    }
}

fn fail(g: &mut Guard, from: IpAddr, user: &str, now: Instant) -> Vec<SecurityEvent> {
    g.failed(from, 5060, user, "REGISTER", FailReason::WrongPassword, now)
}

#[test]
fn a_source_is_banned_at_the_configured_count_and_released_after_the_ban() {
    let t0 = Instant::now();
    let mut g = Guard::new(cfg());
    for i in 0..4 {
        let ev = fail(&mut g, ip(1), "1000", t0 + Duration::from_millis(i));
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(g.admit(ip(1), t0));
    }
    let ev = fail(&mut g, ip(1), "1000", t0 + Duration::from_millis(5));
    assert!(
        matches!(
            ev.last(),
            Some(SecurityEvent::Banned {
                failures: 5,
                why: "failures",
                ..
            })
        ),
        "{ev:?}"
    );
    assert!(!g.admit(ip(1), t0 + Duration::from_secs(1)));
    assert!(
        g.admit(ip(2), t0 + Duration::from_secs(1)),
        "another source"
    );
    assert_eq!(g.bans(t0 + Duration::from_secs(1)).len(), 1);
    assert_eq!(g.stats().dropped_banned, 1);
    assert!(g.admit(ip(1), t0 + Duration::from_secs(301)), "ban lapsed");
    assert!(g.bans(t0 + Duration::from_secs(301)).is_empty());
}

#[test]
fn failures_spread_over_more_than_the_window_do_not_ban() {
    let t0 = Instant::now();
    let mut g = Guard::new(cfg());
    for i in 0..20 {
        fail(&mut g, ip(1), "1000", t0 + Duration::from_secs(15 * i));
    }
    assert!(g.admit(ip(1), t0 + Duration::from_secs(15 * 20)));
}

#[test]
fn a_guarded_user_bans_each_failing_source_at_once_but_not_the_real_phone() {
    let t0 = Instant::now();
    let mut g = Guard::new(cfg());
    // A distributed guess: 8 sources, one failure each, guard the user.
    for i in 0..8 {
        let ev = fail(&mut g, ip(10 + i), "1000", t0);
        if i == 7 {
            assert!(
                ev.iter()
                    .any(|e| matches!(e, SecurityEvent::UserGuarded { failures: 8, .. })),
                "{ev:?}"
            );
        }
    }
    // The next failure for 1000 bans its source at its first failure.
    let ev = fail(&mut g, ip(30), "1000", t0);
    assert!(
        matches!(
            ev.last(),
            Some(SecurityEvent::Banned {
                why: "guarded-user",
                failures: 1,
                ..
            })
        ),
        "{ev:?}"
    );
    assert!(!g.admit(ip(30), t0));
    // The real phone, which never failed, is admitted from its own address.
    assert!(g.admit(ip(50), t0));
    // Another user's failure from a fresh source is counted normally.
    assert_eq!(fail(&mut g, ip(31), "2000", t0).len(), 1);
}

#[test]
fn never_ban_addresses_are_logged_but_never_banned() {
    let t0 = Instant::now();
    let mut g = Guard::new(cfg());
    for _ in 0..50 {
        let ev = fail(&mut g, ip(99), "1000", t0);
        assert!(matches!(ev.as_slice(), [SecurityEvent::AuthFailed { .. }]));
    }
    assert!(g.admit(ip(99), t0));
}

#[test]
fn challenges_are_rate_limited_per_source() {
    let t0 = Instant::now();
    let mut g = Guard::new(cfg());
    let sent = (0..100).filter(|_| g.allow_challenge(ip(1), t0)).count();
    assert_eq!(sent, 20, "the burst");
    assert!(
        g.allow_challenge(ip(2), t0),
        "another source has its own bucket"
    );
    // One second later: 10 more.
    let t1 = t0 + Duration::from_secs(1);
    let sent = (0..100).filter(|_| g.allow_challenge(ip(1), t1)).count();
    assert_eq!(sent, 10);
    assert_eq!(g.stats().challenges_dropped, 80 + 90);
}

#[test]
fn tables_stay_bounded_under_a_flood_of_sources() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_tracked = 64;
    let mut g = Guard::new(c);
    for i in 0..10_000u32 {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        g.failed(
            a,
            1,
            &format!("u{i}"),
            "REGISTER",
            FailReason::UnknownUser,
            t0,
        );
        g.allow_challenge(a, t0);
    }
    assert!(g.sources.len() <= 64 && g.users.len() <= 64 && g.buckets.len() <= 64);
    assert!(g.stats().evicted > 0);
}

#[test]
fn the_log_line_is_fixed_and_escapes_what_came_from_the_wire() {
    let e = SecurityEvent::AuthFailed {
        ip: ip(7),
        port: 5070,
        user: log_user("10 00\"\x1b[31m"),
        method: "REGISTER".into(),
        reason: FailReason::UnknownUser,
    };
    assert_eq!(
        e.to_string(),
        "SECURITY auth-failed src=192.0.2.7 port=5070 user=10%2000%22%1B[31m method=REGISTER reason=unknown-user"
    );
    assert_eq!(log_user(""), "-");
    assert!(log_user(&"x".repeat(1000)).len() < 70);
}
