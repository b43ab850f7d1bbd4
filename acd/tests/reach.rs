//! Gateway reachability (pipelined SIP OPTIONS keep-alives) in virtual time, over a simulated
//! link with a round trip, loss in each direction and cuts.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use acd::reach::{ReachConfig, ReachEvent, Reachability, MAX_OUTSTANDING};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

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

fn changes(ev: &[(Duration, ReachEvent)]) -> Vec<(Duration, bool)> {
    ev.iter()
        .filter_map(|(t, e)| match e {
            ReachEvent::Changed { reachable, .. } => Some((*t, *reachable)),
            _ => None,
        })
        .collect()
}

fn gw() -> SocketAddr {
    "192.0.2.1:5060".parse().expect("address")
}

/// A link to every target: round trip `rtt` (± `jitter`, order kept per direction is not
/// needed here), `loss` in each direction, cut while `cut(t)` (a packet in flight during a cut
/// is lost, as on the WAN lab's wire).
struct Link<'a> {
    rtt: Duration,
    jitter: Duration,
    loss: f64,
    cut: &'a dyn Fn(Duration) -> bool,
}

/// Runs `r` event by event from `t0 + from` to `t0 + to` over `link`. `pending` carries the
/// answers in flight between calls. Returns every event with its time since `t0`.
fn run(
    r: &mut Reachability,
    t0: Instant,
    (from, to): (Duration, Duration),
    link: &Link<'_>,
    rng: &mut StdRng,
    pending: &mut BinaryHeap<Reverse<(Duration, u64, SocketAddr)>>,
) -> Vec<(Duration, ReachEvent)> {
    let mut out = Vec::new();
    let mut now = from;
    loop {
        let due = r.poll_timeout().map(|t| t.saturating_duration_since(t0));
        let next = [due, pending.peek().map(|Reverse((t, _, _))| *t)]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(n) if n <= to => now = now.max(n),
            _ => break,
        }
        while let Some(Reverse((t, id, from))) = pending.peek().copied() {
            if t > now {
                break;
            }
            pending.pop();
            r.answered(t0 + now, id, from);
        }
        if r.poll_timeout().is_some_and(|t| t <= t0 + now) {
            r.handle_timeout(t0 + now);
        }
        for e in drain(r) {
            if let ReachEvent::Probe { id, to } = e {
                let j = if link.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    link.jitter.mul_f64(rng.random::<f64>())
                };
                let rtt = link.rtt + j;
                let delivered = !rng.random_bool(link.loss)
                    && !rng.random_bool(link.loss)
                    && ![now, now + rtt / 2, now + rtt]
                        .iter()
                        .any(|t| (link.cut)(*t));
                if delivered {
                    pending.push(Reverse((now + rtt, id, to)));
                }
            }
            out.push((now, e));
        }
    }
    out
}

#[test]
fn pipelined_probes_every_interval_whatever_is_outstanding() {
    let t0 = Instant::now();
    let mut r = Reachability::new(ReachConfig::default());
    r.set_targets(t0, [gw()]);
    assert!(r.is_reachable(gw()), "reachable until it stays silent");
    let first = probes(&drain(&mut r));
    assert_eq!(first.len(), 1, "probed at once");
    // A 1 s round trip: ten probes out before the first answer.
    let mut pending = BinaryHeap::new();
    pending.push(Reverse((ms(1000), first[0].0, gw())));
    let never = |_: Duration| false;
    let link = Link {
        rtt: ms(1000),
        jitter: Duration::ZERO,
        loss: 0.0,
        cut: &never,
    };
    let mut rng = StdRng::seed_from_u64(1);
    let ev = run(&mut r, t0, (ms(0), ms(990)), &link, &mut rng, &mut pending);
    let sent: Vec<Duration> = ev
        .iter()
        .filter(|(_, e)| matches!(e, ReachEvent::Probe { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(sent.len(), 9, "{sent:?}");
    assert!(sent.windows(2).all(|w| w[1] - w[0] == ms(100)), "{sent:?}");
    // Silent for 700 ms (no round trip known yet): unreachable; the first answer (at 1 s)
    // brings it back, and then a 1 s round trip is no reason to flap.
    assert_eq!(changes(&ev), [(ms(700), false)]);
    let ev = run(
        &mut r,
        t0,
        (ms(990), ms(60_000)),
        &link,
        &mut rng,
        &mut pending,
    );
    assert_eq!(changes(&ev), [(ms(1000), true)], "a slow link is reachable");
    let srtt = r.srtt(gw()).expect("known");
    assert!(srtt >= ms(990) && srtt <= ms(1010), "{srtt:?}");
    let bound = r.silence_bound(gw()).expect("known");
    assert!(bound >= ms(1100) && bound < ms(1200), "{bound:?}");
}

/// Steady state over a link, then `cuts` cuts of `cut_len` at various phases: each detected
/// within `within` of the cut, never before `not_before`, and back within one round trip and
/// one interval of the heal.
fn cuts_detected(rtt: u64, loss: f64, seed: u64, within: Duration, not_before: Duration) {
    let t0 = Instant::now();
    let mut r = Reachability::new(ReachConfig::default());
    r.set_targets(t0, [gw()]);
    let cut_len = ms(3000);
    // A cut every 10 s from 10 s on, shifted by 37 ms each time to try every probe phase.
    let cut_at = |k: u64| ms(10_000 * (k + 1) + 37 * k);
    let cuts = 20;
    let is_cut = move |t: Duration| (0..cuts).any(|k| t >= cut_at(k) && t < cut_at(k) + cut_len);
    let link = Link {
        rtt: ms(rtt),
        jitter: ms(rtt / 10),
        loss,
        cut: &is_cut,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pending = BinaryHeap::new();
    let end = cut_at(cuts) + ms(1000);
    let ev = run(&mut r, t0, (ms(0), end), &link, &mut rng, &mut pending);
    let ch = changes(&ev);
    assert_eq!(
        ch.len() as u64,
        2 * cuts,
        "one down and one up per cut: {ch:?}"
    );
    for (k, pair) in ch.chunks(2).enumerate() {
        let (cut, heal) = (cut_at(k as u64), cut_at(k as u64) + cut_len);
        let ((down, d), (up, u)) = (pair[0], pair[1]);
        assert!(!d && u, "{pair:?}");
        let detection = down - cut;
        assert!(
            down > cut && detection < within && detection >= not_before,
            "rtt {rtt} ms, loss {loss}: cut {k} detected after {detection:?}"
        );
        // The first probe sent after the heal that is not lost answers.
        assert!(
            up > heal && up - heal <= ms(rtt + rtt / 10 + 100) * if loss > 0.0 { 4 } else { 1 },
            "rtt {rtt} ms, loss {loss}: cut {k} healed, back after {:?}",
            up - heal
        );
    }
}

#[test]
fn a_cut_is_detected_within_a_second_at_80_and_300_ms_round_trips() {
    for rtt in [80, 300] {
        // The answers in flight at the cut are lost with it: detection is the bound minus
        // the time since the last answer (under one interval and the jitter without loss).
        cuts_detected(rtt, 0.0, 7, ms(701), ms(550));
        cuts_detected(rtt, 0.03, 11, ms(701), ms(290));
    }
}

#[test]
fn rtt_300_ms_with_3_percent_loss_never_flaps_in_three_simulated_hours() {
    for (seed, rtt) in [(1, 300), (2, 300), (3, 80)] {
        let t0 = Instant::now();
        let mut r = Reachability::new(ReachConfig::default());
        r.set_targets(t0, [gw()]);
        let never = |_: Duration| false;
        let link = Link {
            rtt: ms(rtt),
            jitter: ms(30),
            loss: 0.03,
            cut: &never,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pending = BinaryHeap::new();
        let hour = ms(3_600_000);
        let ev = run(&mut r, t0, (ms(0), hour), &link, &mut rng, &mut pending);
        let probes = ev
            .iter()
            .filter(|(_, e)| matches!(e, ReachEvent::Probe { .. }))
            .count();
        assert_eq!(probes, 36_001, "one probe every 100 ms");
        assert_eq!(
            changes(&ev),
            [],
            "rtt {rtt} ms, 3 % loss, seed {seed}: flapped"
        );
        assert!(r.is_reachable(gw()));
    }
}

#[test]
fn any_response_counts_and_forgotten_probes_still_do() {
    let t0 = Instant::now();
    let (a, b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:5060".parse().expect("address"),
        "192.0.2.2:5060".parse().expect("address"),
    );
    let mut r = Reachability::new(ReachConfig::default());
    r.set_targets(t0, [a, b]);
    let first = probes(&drain(&mut r));
    assert_eq!(first.len(), 2);
    // b answers its first probe; a is silent but answers an offer (heard) at 600 ms.
    r.answered(t0 + ms(50), first[1].0, b);
    r.handle_timeout(t0 + ms(100));
    r.heard(t0 + ms(600), a);
    r.handle_timeout(t0 + ms(700));
    let ev = drain(&mut r);
    assert!(
        !ev.iter().any(|e| matches!(e, ReachEvent::Changed { .. })),
        "{ev:?}"
    );
    assert_eq!(
        r.srtt(a),
        None,
        "an offer's response is no round-trip sample"
    );
    // Both go silent: a 700 ms after it was heard, b's bound is 700 ms too (100 + 50 + 4·25
    // ms is less): unreachable, one change each, b first.
    let mut downs = Vec::new();
    for t in (700..=1400).step_by(10) {
        r.handle_timeout(t0 + ms(t));
        for e in drain(&mut r) {
            if let ReachEvent::Changed { addr, reachable } = e {
                assert!(!reachable);
                downs.push((t, addr));
            }
        }
    }
    assert_eq!(downs, [(750, b), (1300, a)]);
    // Silent for a long while: probes keep going out every 100 ms, but only the last
    // MAX_OUTSTANDING are remembered. An answer to a forgotten one still brings a back (from
    // its source address), without a round-trip sample.
    let mut sent = Vec::new();
    for t in (1400..=20_000).step_by(100) {
        r.handle_timeout(t0 + ms(t));
        sent.extend(
            probes(&drain(&mut r))
                .into_iter()
                .filter(|(_, to)| *to == a),
        );
    }
    assert!(sent.len() > MAX_OUTSTANDING + 10);
    r.answered(t0 + ms(20_010), sent[0].0, a);
    assert_eq!(
        drain(&mut r),
        [ReachEvent::Changed {
            addr: a,
            reachable: true
        }]
    );
    assert_eq!(r.srtt(a), None);
    // A remembered one gives a sample.
    let last = sent.last().expect("probes").0;
    r.answered(t0 + ms(20_050), last, a);
    assert!(r.srtt(a).is_some());
    // An answer from an address that is no target changes nothing.
    r.answered(
        t0 + ms(20_060),
        999_999,
        "192.0.2.9:5060".parse().expect("address"),
    );
    assert!(drain(&mut r).is_empty());
    // Forgotten targets are no longer probed and count as reachable.
    r.set_targets(t0 + ms(20_100), [a]);
    assert!(r.is_reachable(b));
    r.handle_timeout(t0 + ms(25_000));
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
