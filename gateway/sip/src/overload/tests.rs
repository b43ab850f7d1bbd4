//! The overload policy in virtual time: a simulated core with a fixed cost per message, offered
//! twice its capacity by clients that retransmit like SIP UACs (Timer E: 500 ms doubling to
//! 4 s, Timer F: 32 s).

use std::collections::{HashMap, VecDeque};

use super::*;

/// The source of most traffic in these tests (a heavy sender).
const FLOOD: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5060);

fn from_flood(gate: &Gate, m: &SipMessage) -> Verdict {
    gate.decide(m, FLOOD)
}

fn from_port(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

fn request(method: &str, to_tag: bool, auth: bool, n: u64) -> SipMessage {
    let to = if to_tag { ";tag=t1" } else { "" };
    let auth = if auth {
        "Authorization: Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"00\"\r\n"
    } else {
        ""
    };
    let text = format!(
        "{method} sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{n}\r\n\
         From: <sip:u@r>;tag=f\r\nTo: <sip:u@r>{to}\r\nCall-ID: {n}\r\nCSeq: 1 {method}\r\n\
         {auth}Content-Length: 0\r\n\r\n"
    );
    crate::message::parse(text.as_bytes()).expect("test request parses")
}

#[test]
fn classes() {
    assert_eq!(Class::of(&request("INVITE", false, false, 1)), Class::New);
    assert_eq!(Class::of(&request("REGISTER", false, false, 1)), Class::New);
    assert_eq!(
        Class::of(&request("REGISTER", false, true, 1)),
        Class::Authorized
    );
    assert_eq!(Class::of(&request("OPTIONS", false, false, 1)), Class::Low);
    assert_eq!(
        Class::of(&request("INVITE", true, false, 1)),
        Class::Essential
    );
    assert_eq!(
        Class::of(&request("OPTIONS", true, false, 1)),
        Class::Essential
    );
    assert_eq!(Class::of(&request("BYE", true, false, 1)), Class::Essential);
    assert_eq!(
        Class::of(&request("CANCEL", false, false, 1)),
        Class::Essential
    );
    assert_eq!(
        Class::of(&request("ACK", false, false, 1)),
        Class::Essential
    );
}

#[test]
fn no_queue_admits_everything() {
    let t0 = Instant::now();
    let mut o = Overload::default();
    let gate = o.gate();
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_micros(i * 100);
        o.observe(now, Duration::from_millis(5));
        let m = request("INVITE", false, false, i);
        assert_eq!(gate.decide(&m, FLOOD), Verdict::Admit);
        assert!(!o.drop_retransmission(|| panic!("not looked up without overload")));
        assert!(!gate.drop_retransmission(|| panic!("not looked up without overload")));
    }
    assert_eq!(o.counters().admitted, 10_000);
    assert!(!o.shedding());
}

#[test]
fn a_standing_queue_sheds_low_value_first_then_refuses_new_work_but_never_essential() {
    let t0 = Instant::now();
    let mut o = Overload::default();
    let gate = o.gate();
    let mut now = t0;
    // 300 ms of messages that each waited 50 ms: a standing queue.
    for i in 0..300u64 {
        now = t0 + Duration::from_millis(i);
        o.observe(now, Duration::from_millis(50));
    }
    assert!(o.shedding());
    assert!(o.admit_fraction() < 1.0);
    assert_eq!(
        from_flood(&gate, &request("OPTIONS", false, false, 1)),
        Verdict::Drop
    );
    assert!(
        o.drop_retransmission(|| true),
        "a retransmission of a request in progress"
    );
    assert!(!o.drop_retransmission(|| false));
    // The same policy for a register shard's reader, through the gate, in the same count.
    assert!(gate.drop_retransmission(|| true));
    assert!(!gate.drop_retransmission(|| false));
    for m in ["BYE", "ACK", "CANCEL", "INVITE", "UPDATE"] {
        assert_eq!(
            from_flood(&gate, &request(m, true, false, 3)),
            Verdict::Admit,
            "{m} in dialog"
        );
    }
    assert_eq!(
        from_flood(&gate, &request("REGISTER", false, true, 4)),
        Verdict::Admit,
        "the second leg of a digest exchange"
    );
    let verdicts: Vec<Verdict> = (0..100)
        .map(|i| from_flood(&gate, &request("INVITE", false, false, 10 + i)))
        .collect();
    let rejected = verdicts
        .iter()
        .filter(|v| **v == Verdict::Reject { retry_after: 2 })
        .count();
    let admitted = verdicts.iter().filter(|v| **v == Verdict::Admit).count();
    assert_eq!(rejected + admitted, 100);
    assert!(
        rejected > 0 && admitted > 0,
        "{rejected} refused, {admitted} admitted"
    );
    let c = o.counters();
    assert_eq!(
        (
            c.dropped_low,
            c.dropped_retransmissions,
            c.rejected as usize
        ),
        (1, 2, rejected)
    );
    // Far beyond the hard limit even credentials are refused.
    for i in 0..30u64 {
        now += Duration::from_millis(10);
        o.observe(now, Duration::from_secs(1) + Duration::from_millis(i));
    }
    assert_eq!(
        from_flood(&gate, &request("REGISTER", false, true, 5)),
        Verdict::Reject { retry_after: 2 }
    );
    // The queue gone (and then no message at all), admission recovers within a few seconds.
    for _ in 0..1_000u64 {
        now += Duration::from_millis(1);
        o.observe(now, Duration::from_micros(200));
    }
    for _ in 0..50u64 {
        now += Duration::from_millis(100);
        o.tick(now);
    }
    assert!(!o.shedding());
    assert_eq!(
        from_flood(&gate, &request("INVITE", false, false, 6)),
        Verdict::Admit
    );
    assert_eq!(
        from_flood(&gate, &request("OPTIONS", false, false, 7)),
        Verdict::Admit
    );
}

#[test]
fn light_senders_are_admitted_before_heavy_ones_within_a_bound() {
    let t0 = Instant::now();
    let mut o = Overload::default();
    let gate = o.gate();
    let mut now = t0;
    // Deep overload: the admitted fraction falls to its minimum.
    for i in 0..20_000u64 {
        now = t0 + Duration::from_millis(i);
        o.observe(now, Duration::from_millis(150));
    }
    assert!(o.admit_fraction() <= 0.03, "{}", o.admit_fraction());
    let flood: Vec<Verdict> = (0..1_000)
        .map(|i| from_flood(&gate, &request("REGISTER", false, false, i)))
        .collect();
    let admitted = flood.iter().filter(|v| **v == Verdict::Admit).count();
    assert!(
        admitted <= 2 + 30,
        "the heavy source got {admitted} of 1000"
    );
    // A phone on another address: its REGISTER passes at once (twice in an interval, not
    // three times).
    let phone = from_port(5070);
    let reg = request("REGISTER", false, false, 1);
    assert_eq!(gate.decide(&reg, phone), Verdict::Admit);
    assert_eq!(gate.decide(&reg, phone), Verdict::Admit);
    let third: Vec<Verdict> = (0..5).map(|_| gate.decide(&reg, phone)).collect();
    assert!(
        third.contains(&Verdict::Reject { retry_after: 2 }),
        "{third:?}"
    );
    // Many light sources together get at most LIGHT_ADMITS an interval.
    let many = (0..1_000u16)
        .filter(|p| gate.decide(&reg, from_port(10_000 + p)) == Verdict::Admit)
        .count();
    assert!(
        many <= LIGHT_ADMITS as usize + 30,
        "{many} of 1000 one-request sources admitted"
    );
    // The next interval counts afresh: the phone is light again.
    o.observe(now + Duration::from_millis(100), Duration::from_millis(150));
    assert_eq!(gate.decide(&reg, phone), Verdict::Admit);
}

/// What happened to the simulated load.
#[derive(Debug, Default)]
struct Outcome {
    /// Requests answered 200 in the measuring window, per second.
    goodput: f64,
    /// Highest wait of a message in the core after the first 10 s.
    worst_wait: Duration,
    /// When the phone's REGISTER was admitted (seconds after it first tried).
    phone_registered_after: Option<f64>,
    rejected: u64,
}

/// A core that spends `cost` per admitted new request (so its capacity is 1/cost) and 20 µs per
/// retransmission answered from a completed transaction, offered `offered` new requests a
/// second for `secs` seconds. The gate runs at arrival (in the transport reader, on another
/// core: a 503 costs the core nothing). `policy` false admits everything (no overload
/// control). A phone tries to REGISTER at 20 s and again after each 503's Retry-After.
fn simulate(offered: u64, cost: Duration, secs: u64, policy: bool) -> Outcome {
    #[derive(Clone, Copy, PartialEq)]
    enum Fate {
        Waiting,
        Answered,
        Refused,
    }
    struct Client {
        sent: Instant,
        next: Instant,
        interval: Duration,
        fate: Fate,
        phone: bool,
    }
    impl Client {
        fn new(now: Instant, phone: bool) -> Self {
            Client {
                sent: now,
                next: now + Duration::from_millis(500),
                interval: Duration::from_millis(500),
                fate: Fate::Waiting,
                phone,
            }
        }
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let window = t0 + Duration::from_secs(10);
    let step = Duration::from_micros(1_000_000 / offered);
    let mut o = Overload::default();
    let gate = o.gate();
    let msg = request("REGISTER", false, false, 0);
    let mut clients: HashMap<u64, Client> = HashMap::new();
    // Received messages the gate let in: (arrival, client id).
    let mut queue: VecDeque<(Instant, u64)> = VecDeque::new();
    // Requests the core has answered 200 (a retransmission of one is answered cheaply).
    let mut answered: HashMap<u64, ()> = HashMap::new();
    let mut out = Outcome::default();
    let mut answered_in_window = 0u64;
    let phone_start = t0 + Duration::from_secs(20);
    let mut phone_next = Some(phone_start);
    let mut next_arrival = t0;
    let mut id = 0u64;
    let mut busy_until = t0;
    let mut now = t0;
    while now < end {
        // What arrives now: new requests, the phone, retransmissions (Timer E; Timer F gives
        // up), each through the gate.
        let mut arrivals: Vec<(Instant, u64)> = vec![];
        while next_arrival <= now {
            clients.insert(id, Client::new(next_arrival, false));
            arrivals.push((next_arrival, id));
            id += 1;
            next_arrival += step;
        }
        if phone_next.is_some_and(|t| t <= now) {
            phone_next = None;
            clients.insert(id, Client::new(now, true));
            arrivals.push((now, id));
            id += 1;
        }
        if (now - t0).as_micros() % 50_000 < step.as_micros() {
            for (cid, c) in clients.iter_mut() {
                if c.fate == Fate::Waiting && c.next <= now {
                    if now - c.sent >= Duration::from_secs(32) {
                        c.fate = Fate::Refused;
                        continue;
                    }
                    arrivals.push((now, *cid));
                    c.next = now + c.interval;
                    c.interval = (c.interval * 2).min(Duration::from_secs(4));
                }
            }
            clients.retain(|_, c| c.fate == Fate::Waiting || now - c.sent < Duration::from_secs(1));
        }
        for (at, cid) in arrivals {
            let verdict = if policy && !answered.contains_key(&cid) {
                let phone = clients.get(&cid).is_some_and(|c| c.phone);
                gate.decide(&msg, if phone { from_port(5070) } else { FLOOD })
            } else {
                Verdict::Admit
            };
            match verdict {
                Verdict::Admit => queue.push_back((at, cid)),
                Verdict::Drop => {}
                Verdict::Reject { retry_after } => {
                    out.rejected += 1;
                    if let Some(c) = clients.get_mut(&cid) {
                        if c.fate == Fate::Waiting {
                            c.fate = Fate::Refused;
                            if c.phone {
                                phone_next = Some(at + Duration::from_secs(retry_after.into()));
                            }
                        }
                    }
                }
            }
        }
        // The core works through its queue until `now`.
        while busy_until <= now {
            let Some((arrival, cid)) = queue.pop_front() else {
                busy_until = now;
                break;
            };
            let start = busy_until.max(arrival);
            let wait = start - arrival;
            if start >= window {
                out.worst_wait = out.worst_wait.max(wait);
            }
            if policy {
                o.observe(start, wait);
            }
            if answered.contains_key(&cid) {
                busy_until = start + Duration::from_micros(20);
                continue;
            }
            busy_until = start + cost;
            answered.insert(cid, ());
            let Some(c) = clients.get_mut(&cid) else {
                continue;
            };
            if c.fate == Fate::Waiting {
                c.fate = Fate::Answered;
                if busy_until >= window {
                    answered_in_window += 1;
                }
                if c.phone {
                    out.phone_registered_after = Some((busy_until - phone_start).as_secs_f64());
                }
            }
        }
        if policy {
            o.tick(now);
        }
        now += step;
    }
    out.goodput = answered_in_window as f64 / (secs - 10) as f64;
    out
}

#[test]
fn twice_the_capacity_keeps_goodput_above_90_percent_and_a_phone_registers() {
    // Capacity 2,000/s (500 µs each), offered 4,000/s for 60 s.
    let o = simulate(4_000, Duration::from_micros(500), 60, true);
    eprintln!("with overload control: {o:?}");
    assert!(o.goodput >= 0.9 * 2_000.0, "goodput {:.0}/s", o.goodput);
    assert!(o.rejected > 0);
    assert!(
        o.worst_wait < Duration::from_millis(500),
        "a message waited {:?}: clients would retransmit",
        o.worst_wait
    );
    let phone = o.phone_registered_after.expect("the phone registered");
    assert!(phone < 20.0, "the phone registered after {phone} s");
}

#[test]
fn without_the_policy_the_same_load_collapses() {
    // The control experiment: the queue grows without bound, clients retransmit and give up,
    // and what the core answers is mostly for clients that already left.
    let o = simulate(4_000, Duration::from_micros(500), 20, false);
    eprintln!("without overload control: {o:?}");
    assert!(o.worst_wait > Duration::from_secs(1));
    assert!(o.goodput < 0.9 * 2_000.0, "goodput {:.0}/s", o.goodput);
}

#[test]
fn just_above_capacity_goodput_stays_at_capacity() {
    // Capacity 2,000/s. A blind cut of the admitted fraction by 0.95 every interval with a
    // standing queue, through a credit that admitted every second request for any fraction in
    // [0.5, 1), gave 1,756/s (88 %) at 2,100/s offered and 1,444/s (72 %) at 2,300/s.
    for offered in [2_100, 2_300, 2_600, 3_000, 6_000] {
        let o = simulate(offered, Duration::from_micros(500), 40, true);
        eprintln!("offered {offered}/s: {o:?}");
        assert!(
            o.goodput >= 0.97 * 2_000.0,
            "offered {offered}/s: goodput {:.0}/s",
            o.goodput
        );
        assert!(
            o.worst_wait < Duration::from_millis(100),
            "offered {offered}/s: a message waited {:?}",
            o.worst_wait
        );
    }
}

#[test]
fn the_admission_credit_admits_the_fraction_it_is_given() {
    for p in [1.0, 0.95, 0.9, 0.75, 0.5, 0.49, 0.3, 0.02] {
        let p_fixed = (p * f64::from(ONE)) as u32;
        let mut credit = 0;
        let mut admitted = 0u32;
        for _ in 0..10_000 {
            let (c, admit) = admit_credit(credit, p_fixed);
            assert!(c < ONE);
            credit = c;
            admitted += u32::from(admit);
        }
        let want = p * 10_000.0;
        assert!(
            (f64::from(admitted) - want).abs() <= 2.0,
            "p = {p}: {admitted} of 10,000 admitted"
        );
    }
}

#[test]
fn a_standing_queue_cuts_new_work_by_what_the_core_reads_at_most_by_the_margin_and_holds_while_it_drains(
) {
    let t0 = Instant::now();
    let mut o = Overload::default();
    let gate = o.gate();
    let mut next = 0u64;
    let mut offer = |gate: &Gate, n: u64| {
        let admitted = (0..n)
            .filter(|i| {
                from_flood(gate, &request("REGISTER", false, false, next + i)) == Verdict::Admit
            })
            .count();
        next += n;
        admitted
    };
    let read = |o: &mut Overload, from_ms: u64, n: u64, wait: Duration| {
        for i in 0..n {
            o.observe(
                t0 + Duration::from_millis(from_ms) + Duration::from_micros(i * 90),
                wait,
            );
        }
    };
    // Interval 1: 1,000 new requests let in, the core read 500 of them, each after 50 ms:
    // 0.85 (above twice the target) × 500 / 1,000 would be 0.425; one interval cuts at most
    // to 0.85.
    assert_eq!(offer(&gate, 1_000), 1_000);
    read(&mut o, 0, 500, Duration::from_millis(50));
    read(&mut o, 100, 1, Duration::from_millis(30));
    let p1 = o.admit_fraction();
    assert!((p1 - 0.85).abs() < 1e-9, "{p1}");
    assert!(o.shedding());
    // Interval 2: the queue still stands (30 ms) but drains: 200 let in, 400 read: p holds.
    let admitted = offer(&gate, 200);
    assert!((168..=172).contains(&admitted), "{admitted} of 200 at {p1}");
    read(&mut o, 100, 399, Duration::from_millis(30));
    read(&mut o, 200, 1, Duration::from_millis(30));
    assert_eq!(o.admit_fraction(), p1);
    // Interval 3: nearly balanced: 1,000 offered (850 let in), 850 read: new work is scaled by
    // 0.95 × 850 / 850, a gentler cut than the margin's bound.
    assert_eq!(offer(&gate, 1_000), 850);
    read(&mut o, 200, 849, Duration::from_millis(30));
    read(&mut o, 300, 1, Duration::ZERO);
    let p3 = o.admit_fraction();
    assert!((p3 - 0.85 * 0.95).abs() < 0.01, "{p3}");
    // Interval 4: the queue gone, the fraction grows again.
    read(&mut o, 300, 10, Duration::ZERO);
    read(&mut o, 400, 1, Duration::ZERO);
    assert!((o.admit_fraction() - (p3 + 0.02)).abs() < 1e-9);
}
