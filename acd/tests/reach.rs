//! Gateway reachability (SIP OPTIONS keep-alives) in virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use acd::reach::{ReachConfig, ReachEvent, Reachability};

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn drain(r: &mut Reachability) -> Vec<ReachEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn probes(ev: &[ReachEvent]) -> Vec<(u64, SocketAddr)> {
    ev.iter()
        .filter_map(|e| match e {
            ReachEvent::Probe { id, to } => Some((*id, *to)),
            _ => None,
        })
        .collect()
}

fn changes(ev: &[ReachEvent]) -> Vec<(SocketAddr, bool)> {
    ev.iter()
        .filter_map(|e| match e {
            ReachEvent::Changed { addr, reachable } => Some((*addr, *reachable)),
            _ => None,
        })
        .collect()
}

/// Runs the clock from `from` to `to` in 10 ms steps; `answer(addr)` says whether `addr`
/// answers probes (after `rtt`). Returns every event with its time.
fn run(
    r: &mut Reachability,
    from: Instant,
    to: Duration,
    rtt: Duration,
    answer: impl Fn(Duration, SocketAddr) -> bool,
) -> Vec<(Duration, ReachEvent)> {
    let mut out = Vec::new();
    let mut pending: Vec<(Duration, u64)> = Vec::new();
    let mut now = Duration::ZERO;
    while now <= to {
        let at = from + now;
        pending.retain(|(due, id)| {
            if *due <= now {
                r.answered(at, *id);
                false
            } else {
                true
            }
        });
        if r.poll_timeout().is_some_and(|t| t <= at) {
            r.handle_timeout(at);
        }
        for e in drain(r) {
            if let ReachEvent::Probe { id, to } = e {
                if answer(now, to) {
                    pending.push((now + rtt, id));
                }
            }
            out.push((now, e));
        }
        now += ms(10);
    }
    out
}

#[test]
fn probes_every_interval_unreachable_after_two_misses_back_at_first_answer() {
    let t0 = Instant::now();
    let gw: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    let mut r = Reachability::new(ReachConfig {
        interval: ms(500),
        timeout: ms(400),
        misses: 2,
    });
    r.set_targets(t0, [gw]);
    assert!(r.is_reachable(gw), "reachable until it misses");
    assert_eq!(probes(&drain(&mut r)), [(1, gw)], "probed at once");
    // Answers (80 ms RTT) until 3 s, silent 3 s .. 6 s, answers again after.
    let events = run(&mut r, t0, ms(9000), ms(80), |now, _| {
        now < ms(3000) || now >= ms(6000)
    });
    let sent: Vec<Duration> = events
        .iter()
        .filter(|(_, e)| matches!(e, ReachEvent::Probe { .. }))
        .map(|(t, _)| *t)
        .collect();
    // Answered probes: every 500 ms after the answer.
    assert!(
        sent.windows(2)
            .take_while(|w| w[1] < ms(3000))
            .all(|w| w[1] - w[0] >= ms(500) && w[1] - w[0] <= ms(600)),
        "{sent:?}"
    );
    let ch: Vec<(Duration, bool)> = events
        .iter()
        .filter_map(|(t, e)| match e {
            ReachEvent::Changed { reachable, .. } => Some((*t, *reachable)),
            _ => None,
        })
        .collect();
    assert_eq!(ch.len(), 2, "{ch:?}");
    // The first probe after the cut goes out at most 580 ms after it (interval after the
    // last answer), misses at +400 ms, the next at once, misses at +400 ms: ≤ 1.4 s.
    assert!(
        !ch[0].1 && ch[0].0 > ms(3000) && ch[0].0 <= ms(4400),
        "{ch:?}"
    );
    // Back at the first answer: probes go out every 400 ms while unreachable.
    assert!(
        ch[1].1 && ch[1].0 >= ms(6080) && ch[1].0 <= ms(6500),
        "{ch:?}"
    );
    assert!(r.is_reachable(gw));
    let expired = events
        .iter()
        .filter(|(_, e)| matches!(e, ReachEvent::Expired { .. }))
        .count();
    assert!(
        (6..=9).contains(&expired),
        "one expiry per 400 ms of silence: {expired}"
    );
}

#[test]
fn one_lost_probe_is_not_unreachable_and_any_answer_counts() {
    let t0 = Instant::now();
    let (a, b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:5060".parse().unwrap(),
        "192.0.2.2:5060".parse().unwrap(),
    );
    let mut r = Reachability::new(ReachConfig::default());
    r.set_targets(t0, [a, b]);
    let first = probes(&drain(&mut r));
    assert_eq!(first.len(), 2);
    // a's first probe is lost; b answers.
    r.answered(t0 + ms(50), first[1].0);
    r.handle_timeout(t0 + ms(400));
    let ev = drain(&mut r);
    assert!(changes(&ev).is_empty(), "one miss: {ev:?}");
    assert_eq!(probes(&ev), [(3, a)], "a re-probed at once after its miss");
    // The re-probe is lost too, but an offer's response from a arrives: reachable, no change.
    r.heard(t0 + ms(700), a);
    r.handle_timeout(t0 + ms(800));
    assert!(changes(&drain(&mut r)).is_empty());
    // Now both go silent: two misses in a row each → unreachable, one change each.
    r.handle_timeout(t0 + ms(1200));
    r.handle_timeout(t0 + ms(1600));
    r.handle_timeout(t0 + ms(2000));
    let ev = drain(&mut r);
    let mut ch = changes(&ev);
    ch.sort();
    assert_eq!(ch, [(a, false), (b, false)], "{ev:?}");
    assert!(!r.is_reachable(a) && !r.is_reachable(b));
    // A suspect target with a probe out is not probed twice.
    r.suspect(t0 + ms(2010), a);
    assert!(probes(&drain(&mut r)).is_empty());
    // A late answer from a: back at once, one change.
    r.heard(t0 + ms(2100), a);
    assert_eq!(changes(&drain(&mut r)), [(a, true)]);
    // Forgotten targets are no longer probed and count as reachable.
    r.set_targets(t0 + ms(2200), [a]);
    assert!(r.is_reachable(b));
    r.handle_timeout(t0 + ms(5000));
    assert!(probes(&drain(&mut r)).iter().all(|(_, to)| *to == a));
}

#[test]
fn targets_are_bounded() {
    let t0 = Instant::now();
    let mut r = Reachability::new(ReachConfig::default());
    let many = (0..2000u32).map(|i| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5060)));
    r.set_targets(t0, many);
    assert_eq!(probes(&drain(&mut r)).len(), acd::reach::MAX_TARGETS);
    assert_eq!(r.dropped(), 2000 - acd::reach::MAX_TARGETS as u64);
}
