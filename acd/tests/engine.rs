//! Engine behaviour in virtual time: strategies, penalties, rules, wrap-up, ringinuse, retries,
//! empty handling, maxlen, weight, autofill, pause, abandon, and a randomized property test.

use acd::engine::Rng;
use acd::{
    Action, CompletedBy, DeviceState, EmptyConditions, Engine, EngineConfig, EngineError,
    ExitReason, Join, MemberConfig, OfferId, OfferOutcome, QueueConfig, QueueLogEvent, Strategy,
};
use std::collections::HashMap;
use std::time::Duration;

fn t(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn queue(name: &str, strategy: Strategy, members: &[&str]) -> QueueConfig {
    let mut c = QueueConfig::new(name);
    c.strategy = strategy;
    c.ringinuse = false;
    c.retry = 5;
    c.timeout = 15;
    c.members = members.iter().map(|m| m.parse().expect("member")).collect();
    c
}

fn engine_with(cfg: EngineConfig) -> Engine {
    let mut e = Engine::new(&cfg).expect("engine");
    for q in &cfg.queues {
        for m in &q.members {
            let k = m.state_interface.clone().unwrap_or(m.interface.clone());
            e.device_state(t(0), &k, DeviceState::NotInUse);
        }
    }
    drain(&mut e);
    e
}

fn engine(queues: Vec<QueueConfig>) -> Engine {
    engine_with(EngineConfig {
        queues,
        ..Default::default()
    })
}

fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

/// What `f` picks out of the actions, in order.
fn pick<'a, T>(acts: &'a [Action], f: impl FnMut(&'a Action) -> Option<T>) -> Vec<T> {
    acts.iter().filter_map(f).collect()
}

fn offers(acts: &[Action]) -> Vec<(String, String)> {
    pick(acts, |a| match a {
        Action::Offer {
            caller, interface, ..
        } => Some((caller.clone(), interface.clone())),
        _ => None,
    })
}

fn cancels(acts: &[Action]) -> Vec<String> {
    pick(acts, |a| match a {
        Action::CancelOffer { interface, .. } => Some(interface.clone()),
        _ => None,
    })
}

fn logs<'a>(acts: &'a [Action], event: &str) -> Vec<&'a QueueLogEvent> {
    pick(acts, |a| match a {
        Action::QueueLog(l) if l.event == event => Some(l),
        _ => None,
    })
}

/// Join, expect exactly one offer, answer it; returns the interface.
fn call(e: &mut Engine, now: Duration, caller: &str, q: &str) -> String {
    e.join(now, Join::new(caller, q)).expect("join");
    let o = offers(&drain(e));
    assert_eq!(o.len(), 1, "one offer for {caller}: {o:?}");
    let iface = o[0].1.clone();
    e.offer_outcome(
        now,
        e.offer_of(&iface).expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    let acts = drain(e);
    assert!(acts.iter().any(|a| matches!(a, Action::Connect { .. })));
    iface
}

fn hangup(e: &mut Engine, now: Duration, caller: &str) {
    e.call_completed(now, caller, CompletedBy::Caller)
        .expect("complete");
    drain(e);
}

#[test]
fn ringall_rings_best_tier_and_answer_cancels_the_rest() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::RingAll,
        &["PJSIP/a", "PJSIP/b", "PJSIP/c,1"],
    )]);
    e.join(t(1), Join::new("c1", "q")).expect("join");
    let acts = drain(&mut e);
    let o = offers(&acts);
    assert_eq!(
        o.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["PJSIP/a", "PJSIP/b"],
        "penalty-1 member not rung while tier 0 is"
    );
    let enter = logs(&acts, "ENTERQUEUE");
    assert_eq!(enter[0].line(), "1|c1|q|NONE|ENTERQUEUE|||1");
    e.offer_outcome(
        t(4),
        e.offer_of("PJSIP/b").expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    let acts = drain(&mut e);
    assert_eq!(cancels(&acts), ["PJSIP/a"]);
    let c = logs(&acts, "CONNECT");
    assert_eq!(c[0].agent, "PJSIP/b");
    assert_eq!(c[0].data, ["3", "", "3"]);
    assert_eq!(e.queue_stats("q").expect("q").answered, 1);
}

#[test]
fn leastrecent_picks_longest_idle() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::LeastRecent,
        &["PJSIP/a", "PJSIP/b", "PJSIP/c"],
    )]);
    assert_eq!(call(&mut e, t(0), "1", "q"), "PJSIP/a");
    hangup(&mut e, t(10), "1");
    assert_eq!(call(&mut e, t(11), "2", "q"), "PJSIP/b");
    hangup(&mut e, t(20), "2");
    assert_eq!(call(&mut e, t(21), "3", "q"), "PJSIP/c");
    hangup(&mut e, t(30), "3");
    // Idle: a 30 s, b 20 s, c 10 s.
    assert_eq!(call(&mut e, t(40), "4", "q"), "PJSIP/a");
    assert_eq!(call(&mut e, t(41), "5", "q"), "PJSIP/b");
    hangup(&mut e, t(42), "5");
    // b just finished; c idle 12 s is now the longest free.
    assert_eq!(call(&mut e, t(43), "6", "q"), "PJSIP/c");
}

#[test]
fn fewestcalls_picks_fewest_completed() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::FewestCalls,
        &["PJSIP/a", "PJSIP/b", "PJSIP/c"],
    )]);
    for (i, who) in ["PJSIP/a", "PJSIP/b", "PJSIP/c", "PJSIP/a"]
        .iter()
        .enumerate()
    {
        let id = format!("x{i}");
        let now = t(i as u64 * 10);
        assert_eq!(&call(&mut e, now, &id, "q"), who);
        hangup(&mut e, now + t(1), &id);
    }
    // a has 2 calls, b and c 1: b first (config order on ties).
    assert_eq!(call(&mut e, t(100), "y", "q"), "PJSIP/b");
    assert_eq!(e.member_stats("q", "pjsip/a").expect("a").calls, 2);
}

#[test]
fn rrmemory_remembers_position_across_calls_and_roundrobin_alias() {
    assert_eq!(
        "roundrobin".parse::<Strategy>().expect("alias"),
        Strategy::RrMemory
    );
    for strat in [Strategy::RrMemory, Strategy::RrOrdered] {
        let mut e = engine(vec![queue("q", strat, &["PJSIP/a", "PJSIP/b", "PJSIP/c"])]);
        let mut got = Vec::new();
        for i in 0..7 {
            let id = format!("c{i}");
            got.push(call(&mut e, t(i * 10), &id, "q"));
            hangup(&mut e, t(i * 10 + 1), &id);
        }
        assert_eq!(
            got,
            ["PJSIP/a", "PJSIP/b", "PJSIP/c", "PJSIP/a", "PJSIP/b", "PJSIP/c", "PJSIP/a"],
            "{strat}"
        );
        // Skips a busy member and continues after it.
        e.device_state(t(100), "PJSIP/c", DeviceState::InUse);
        assert_eq!(call(&mut e, t(101), "z1", "q"), "PJSIP/b");
        assert_eq!(call(&mut e, t(102), "z2", "q"), "PJSIP/a");
    }
}

#[test]
fn linear_always_starts_from_the_top() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["PJSIP/a", "PJSIP/b", "PJSIP/c"],
    )]);
    for i in 0..4 {
        let id = format!("c{i}");
        assert_eq!(call(&mut e, t(i * 10), &id, "q"), "PJSIP/a");
        hangup(&mut e, t(i * 10 + 1), &id);
    }
    // With a busy: the next free from the top.
    assert_eq!(call(&mut e, t(100), "busy", "q"), "PJSIP/a");
    assert_eq!(call(&mut e, t(101), "n", "q"), "PJSIP/b");
    // Dynamic members go at the end, in order added.
    e.add_member(t(102), "q", MemberConfig::new("PJSIP/d"))
        .expect("add");
    e.device_state(t(102), "PJSIP/c", DeviceState::Unavailable);
    assert_eq!(call(&mut e, t(103), "m", "q"), "PJSIP/d");
}

fn pick_counts(
    strategy: Strategy,
    members: &[&str],
    seed: u64,
    n: usize,
) -> HashMap<String, usize> {
    let mut e = engine_with(EngineConfig {
        queues: vec![queue("q", strategy, members)],
        seed,
        ..Default::default()
    });
    let mut counts = HashMap::new();
    for i in 0..n {
        let id = format!("c{i}");
        let now = t(i as u64 * 10);
        let who = call(&mut e, now, &id, "q");
        *counts.entry(who).or_insert(0) += 1;
        hangup(&mut e, now + t(1), &id);
    }
    counts
}

#[test]
fn random_is_seeded_deterministic_and_respects_penalty_tiers() {
    let m = ["PJSIP/a", "PJSIP/b", "PJSIP/c", "PJSIP/d,1"];
    let c1 = pick_counts(Strategy::Random, &m, 7, 600);
    let c2 = pick_counts(Strategy::Random, &m, 7, 600);
    assert_eq!(c1, c2, "same seed, same picks");
    assert_eq!(
        c1.get("PJSIP/d"),
        None,
        "penalty 1 never used while tier 0 is free"
    );
    for who in ["PJSIP/a", "PJSIP/b", "PJSIP/c"] {
        let n = c1[who];
        assert!((140..=260).contains(&n), "{who} {n} of 600 ~ uniform");
    }
    let c3 = pick_counts(Strategy::Random, &m, 8, 600);
    assert_ne!(c1, c3, "another seed, other picks");
}

#[test]
fn wrandom_weights_by_penalty() {
    // Metric uniform in [0,1000) for penalty 0 vs [0,4000) for penalty 3: P(a) = 7/8.
    let c = pick_counts(Strategy::WRandom, &["PJSIP/a", "PJSIP/b,3"], 3, 800);
    assert_eq!(
        c,
        pick_counts(Strategy::WRandom, &["PJSIP/a", "PJSIP/b,3"], 3, 800)
    );
    let a = c["PJSIP/a"] as f64 / 800.0;
    assert!((0.82..=0.93).contains(&a), "P(a) = {a}");
    assert!(
        c.get("PJSIP/b").copied().unwrap_or(0) > 40,
        "penalty does not exclude"
    );
}

#[test]
fn penalty_tiers_and_penaltymemberslimit() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["PJSIP/hi,2", "PJSIP/lo,0"],
    )]);
    assert_eq!(call(&mut e, t(0), "1", "q"), "PJSIP/lo");
    assert_eq!(
        call(&mut e, t(1), "2", "q"),
        "PJSIP/hi",
        "next tier when lower is busy"
    );
    // QUEUE_MAX_PENALTY excludes the higher tier.
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["PJSIP/hi,2", "PJSIP/lo,0"],
    )]);
    assert_eq!(call(&mut e, t(0), "1", "q"), "PJSIP/lo");
    let mut j = Join::new("2", "q");
    j.penalties.max = Some(1);
    e.join(t(1), j).expect("join");
    assert!(offers(&drain(&mut e)).is_empty());
    // penaltymemberslimit = 2 with 2 members: penalties ignored, config order wins.
    let mut c = queue("q", Strategy::Linear, &["PJSIP/hi,2", "PJSIP/lo,0"]);
    c.penaltymemberslimit = 2;
    let mut e = engine(vec![c]);
    assert_eq!(call(&mut e, t(0), "1", "q"), "PJSIP/hi");
}

#[test]
fn penalty_rule_raises_max_penalty_after_wait() {
    let mut c = queue("q", Strategy::Linear, &["PJSIP/lo,0", "PJSIP/hi,5"]);
    c.defaultrule = Some("escalate".into());
    let mut rules = HashMap::new();
    rules.insert("escalate".to_string(), vec!["30,+5".to_string()]);
    let mut e = engine_with(EngineConfig {
        queues: vec![c],
        rules,
        ..Default::default()
    });
    e.device_state(t(0), "PJSIP/lo", DeviceState::InUse);
    let mut j = Join::new("c", "q");
    j.penalties.max = Some(0);
    e.join(t(0), j).expect("join");
    assert!(offers(&drain(&mut e)).is_empty());
    assert_eq!(e.poll_timeout(), Some(t(30)));
    e.handle_timeout(t(29));
    assert!(offers(&drain(&mut e)).is_empty());
    e.handle_timeout(t(30));
    assert_eq!(
        offers(&drain(&mut e)),
        [("c".to_string(), "PJSIP/hi".to_string())]
    );
    // A rule does not touch values unset at join: no max penalty means everyone at once.
    let mut c = queue("q", Strategy::Linear, &["PJSIP/lo,0", "PJSIP/hi,5"]);
    c.defaultrule = Some("tighten".into());
    let mut rules = HashMap::new();
    rules.insert("tighten".to_string(), vec!["0,0".to_string()]);
    let mut e = engine_with(EngineConfig {
        queues: vec![c],
        rules,
        ..Default::default()
    });
    e.device_state(t(0), "PJSIP/lo", DeviceState::InUse);
    e.join(t(0), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/hi");
}

#[test]
fn wrapup_per_queue_per_member_and_shared_lastcall() {
    let mut q1 = queue("q1", Strategy::Linear, &["PJSIP/a", "PJSIP/b,,,,,20"]);
    q1.wrapuptime = 10;
    let q2 = queue("q2", Strategy::Linear, &["PJSIP/a"]);
    let mut e = engine(vec![q1.clone(), q2.clone()]);
    assert_eq!(call(&mut e, t(0), "1", "q1"), "PJSIP/a");
    hangup(&mut e, t(5), "1");
    assert_eq!(e.is_member_available("q1", "PJSIP/a"), Some(false));
    assert_eq!(call(&mut e, t(6), "2", "q1"), "PJSIP/b", "a in wrap-up");
    hangup(&mut e, t(7), "2");
    e.join(t(8), Join::new("3", "q1")).expect("join");
    assert!(offers(&drain(&mut e)).is_empty(), "both in wrap-up");
    e.handle_timeout(t(14));
    assert!(offers(&drain(&mut e)).is_empty());
    e.handle_timeout(t(15));
    assert_eq!(
        offers(&drain(&mut e))[0].1,
        "PJSIP/a",
        "wrap-up timer wakes the queue"
    );
    // Without shared_lastcall, q2 (no wrap-up) gets a right after its q1 call.
    let mut e = engine(vec![q1.clone(), q2.clone()]);
    assert_eq!(call(&mut e, t(0), "1", "q1"), "PJSIP/a");
    hangup(&mut e, t(5), "1");
    e.join(t(6), Join::new("2", "q2")).expect("join");
    assert_eq!(offers(&drain(&mut e)).len(), 1);
    // With shared_lastcall and a wrap-up in q2, the q1 call blocks a in q2 too.
    let mut q2w = q2.clone();
    q2w.wrapuptime = 10;
    let mut e = engine_with(EngineConfig {
        queues: vec![q1, q2w],
        shared_lastcall: true,
        ..Default::default()
    });
    assert_eq!(call(&mut e, t(0), "1", "q1"), "PJSIP/a");
    hangup(&mut e, t(5), "1");
    e.join(t(6), Join::new("2", "q2")).expect("join");
    assert!(offers(&drain(&mut e)).is_empty());
    assert_eq!(e.member_stats("q2", "PJSIP/a").expect("m").calls, 1);
    e.handle_timeout(t(15));
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/a");
}

#[test]
fn ringinuse_no_skips_busy_agent_yes_offers_and_member_overrides() {
    let mut e = engine(vec![queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"])]);
    e.device_state(t(0), "pjsip/A", DeviceState::InUse); // non-queue call, case-insensitive
    e.join(t(1), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/b");

    let mut c = queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"]);
    c.ringinuse = true;
    let mut e = engine(vec![c]);
    e.device_state(t(0), "PJSIP/a", DeviceState::InUse);
    e.join(t(1), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/a");

    let mut c = queue("q", Strategy::Linear, &["PJSIP/a,0,,,no", "PJSIP/b"]);
    c.ringinuse = true;
    let mut e = engine(vec![c]);
    e.device_state(t(0), "PJSIP/a", DeviceState::OnHold);
    e.join(t(1), Join::new("c", "q")).expect("join");
    assert_eq!(
        offers(&drain(&mut e))[0].1,
        "PJSIP/b",
        "member ringinuse=no overrides"
    );
    // Unavailable / invalid never, unknown yes.
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["PJSIP/a", "PJSIP/b", "PJSIP/c"],
    )]);
    e.device_state(t(0), "PJSIP/a", DeviceState::Unavailable);
    e.device_state(t(0), "PJSIP/b", DeviceState::Invalid);
    e.device_state(t(0), "PJSIP/c", DeviceState::Unknown);
    e.join(t(1), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/c");
}

#[test]
fn state_interface_and_local_channels() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["Local/1000@agents/n,0,Alice,PJSIP/1000", "PJSIP/2000"],
    )]);
    e.device_state(t(0), "PJSIP/1000", DeviceState::Busy);
    e.join(t(1), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/2000");
    e.device_state(t(2), "pjsip/1000", DeviceState::NotInUse);
    e.join(t(2), Join::new("d", "q")).expect("join");
    let acts = drain(&mut e);
    assert!(offers(&acts).is_empty(), "serial: head still ringing");
    e.offer_outcome(
        t(3),
        e.offer_of("PJSIP/2000").expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    let acts = drain(&mut e);
    assert_eq!(offers(&acts)[0].1, "Local/1000@agents/n");
    assert!(e.member_stats("q", "local/1000@agents").is_some());
}

#[test]
fn no_answer_logs_ringnoanswer_and_next_member_after_retry() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::RrMemory,
        &["PJSIP/a", "PJSIP/b"],
    )]);
    e.join(t(0), Join::new("c", "q")).expect("join");
    let acts = drain(&mut e);
    assert_eq!(offers(&acts)[0].1, "PJSIP/a");
    assert!(
        matches!(acts.iter().find(|a| matches!(a, Action::Offer{..})),
        Some(Action::Offer { ring_timeout: Some(d), .. }) if *d == t(15))
    );
    assert_eq!(e.poll_timeout(), Some(t(15)));
    e.handle_timeout(t(15));
    let acts = drain(&mut e);
    assert_eq!(cancels(&acts), ["PJSIP/a"]);
    let rna = logs(&acts, "RINGNOANSWER");
    assert_eq!(rna[0].agent, "PJSIP/a");
    assert_eq!(rna[0].data, ["15000"]);
    assert!(offers(&acts).is_empty(), "retry pause first");
    assert_eq!(e.poll_timeout(), Some(t(20)));
    e.handle_timeout(t(20));
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/b");
    // Reported no-answer behaves the same.
    e.offer_outcome(
        t(22),
        e.offer_of("PJSIP/b").expect("offer"),
        OfferOutcome::NoAnswer,
    )
    .expect("rna");
    let acts = drain(&mut e);
    assert_eq!(logs(&acts, "RINGNOANSWER").len(), 1);
    assert!(offers(&acts).is_empty());
    e.handle_timeout(t(27));
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/a");
}

#[test]
fn busy_or_refused_tries_next_member_at_once() {
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["PJSIP/a", "PJSIP/b", "PJSIP/c"],
    )]);
    e.join(t(0), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/a");
    let first = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(ms(500), first, OfferOutcome::Busy)
        .expect("busy");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/b");
    e.offer_outcome(
        t(1),
        e.offer_of("PJSIP/b").expect("offer"),
        OfferOutcome::Busy,
    )
    .expect("busy");
    let acts = drain(&mut e);
    assert_eq!(offers(&acts)[0].1, "PJSIP/c");
    assert!(
        matches!(acts.iter().find(|a| matches!(a, Action::Offer{..})),
        Some(Action::Offer { ring_timeout: Some(d), .. }) if *d == t(14)),
        "same ring window"
    );
    e.offer_outcome(
        t(2),
        e.offer_of("PJSIP/c").expect("offer"),
        OfferOutcome::Busy,
    )
    .expect("busy");
    let acts = drain(&mut e);
    assert!(offers(&acts).is_empty(), "everyone busy: retry");
    e.handle_timeout(t(7));
    assert_eq!(
        offers(&drain(&mut e))[0].1,
        "PJSIP/a",
        "linear wraps to the top"
    );
    assert_eq!(
        e.offer_outcome(t(8), first, OfferOutcome::Answered),
        Err(EngineError::NoSuchOffer(first)),
        "a stale offer id is refused"
    );
}

#[test]
fn unreachable_member_is_skipped_its_offer_cancelled_and_back_when_reachable() {
    let mut e = engine(vec![queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"])]);
    e.join(t(0), Join::new("c1", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/a");
    // a's gateway stops answering while a rings: that offer is cancelled, b is tried at once.
    e.set_reachable(ms(800), "PJSIP/A", false);
    let acts = drain(&mut e);
    assert_eq!(cancels(&acts), ["PJSIP/a"]);
    assert_eq!(logs(&acts, "RINGCANCELED").len(), 1);
    assert_eq!(offers(&acts), [("c1".to_string(), "PJSIP/b".to_string())]);
    assert!(!e.is_reachable("pjsip/a"));
    assert_eq!(e.is_member_available("q", "PJSIP/a"), Some(false));
    // Saying it again changes nothing; an unknown interface is ignored.
    e.set_reachable(ms(900), "PJSIP/a", false);
    e.set_reachable(ms(900), "PJSIP/zz", false);
    assert!(drain(&mut e).is_empty());
    // b refuses. a's device reports NOT_INUSE again (fabric state is independent of
    // reachability): still never offered; the caller waits for its retry.
    e.offer_outcome(
        t(1),
        e.offer_of("PJSIP/b").expect("offer"),
        OfferOutcome::Busy,
    )
    .expect("busy");
    e.device_state(t(1), "PJSIP/a", DeviceState::InUse);
    e.device_state(t(1), "PJSIP/a", DeviceState::NotInUse);
    assert!(offers(&drain(&mut e)).is_empty());
    // The gateway answers again before the retry ends: offered at the retry (linear: top).
    e.set_reachable(t(2), "PJSIP/a", true);
    assert!(offers(&drain(&mut e)).is_empty(), "retry still running");
    assert!(e.is_reachable("PJSIP/a"));
    e.handle_timeout(t(6));
    assert_eq!(
        offers(&drain(&mut e)),
        [("c1".to_string(), "PJSIP/a".to_string())]
    );
}

#[test]
fn member_reachable_again_is_offered_to_a_waiting_caller_at_once() {
    let mut e = engine(vec![queue("q", Strategy::Linear, &["PJSIP/a"])]);
    e.set_reachable(t(0), "PJSIP/a", false);
    e.join(t(1), Join::new("c1", "q")).expect("join");
    assert!(offers(&drain(&mut e)).is_empty(), "nobody reachable");
    e.set_reachable(t(3), "PJSIP/a", true);
    assert_eq!(
        offers(&drain(&mut e)),
        [("c1".to_string(), "PJSIP/a".to_string())]
    );
}

#[test]
fn joinempty_and_leavewhenempty() {
    let mut c = queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b,,,,,,yes"]);
    c.joinempty = EmptyConditions::parse("strict", true).expect("strict");
    c.leavewhenempty = EmptyConditions::parse("unavailable,paused", false).expect("lwe");
    let mut e = engine(vec![c]);
    e.device_state(t(0), "PJSIP/a", DeviceState::Unavailable);
    assert_eq!(
        e.join(t(1), Join::new("c", "q")),
        Err(EngineError::JoinEmpty("q".into()))
    );
    e.device_state(t(2), "PJSIP/a", DeviceState::InUse);
    assert_eq!(
        e.join(t(3), Join::new("c", "q")),
        Ok(1),
        "in use is not empty under strict"
    );
    let acts = drain(&mut e);
    assert_eq!(logs(&acts, "ENTERQUEUE").len(), 1);
    e.device_state(t(10), "PJSIP/a", DeviceState::Unavailable);
    let acts = drain(&mut e);
    let ex = logs(&acts, "EXITEMPTY");
    assert_eq!(ex[0].data, ["1", "1", "7"]);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::CallerRemoved {
            reason: ExitReason::Empty,
            ..
        }
    )));
    assert_eq!(e.queue_stats("q").expect("q").exited_empty, 1);
    // Legacy yes / no.
    assert_eq!(
        EmptyConditions::parse("yes", true),
        Ok(EmptyConditions::NONE)
    );
    assert_eq!(
        EmptyConditions::parse("no", false),
        Ok(EmptyConditions::NONE)
    );
}

#[test]
fn maxlen_caps_callers() {
    let mut c = queue("q", Strategy::Linear, &["PJSIP/a"]);
    c.maxlen = 2;
    let mut e = engine(vec![c]);
    e.device_state(t(0), "PJSIP/a", DeviceState::InUse);
    assert_eq!(e.join(t(1), Join::new("1", "q")), Ok(1));
    assert_eq!(e.join(t(1), Join::new("2", "q")), Ok(2));
    assert_eq!(
        e.join(t(1), Join::new("3", "q")),
        Err(EngineError::QueueFull("q".into()))
    );
    e.leave(t(2), "1").expect("leave");
    assert_eq!(e.join(t(3), Join::new("3", "q")), Ok(2));
}

#[test]
fn weight_gives_shared_member_to_higher_weight_queue() {
    let mut lo = queue("lo", Strategy::Linear, &["PJSIP/a"]);
    lo.weight = 0;
    let mut hi = queue("hi", Strategy::Linear, &["PJSIP/a"]);
    hi.weight = 10;
    let mut e = engine(vec![lo, hi]);
    e.device_state(t(0), "PJSIP/a", DeviceState::InUse);
    e.join(t(1), Join::new("low", "lo")).expect("join");
    e.join(t(2), Join::new("high", "hi")).expect("join");
    drain(&mut e);
    e.device_state(t(3), "PJSIP/a", DeviceState::NotInUse);
    assert_eq!(
        offers(&drain(&mut e)),
        [("high".to_string(), "PJSIP/a".to_string())],
        "earlier low-weight caller waits"
    );
    e.offer_outcome(
        t(4),
        e.offer_of("PJSIP/a").expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    drain(&mut e);
    e.call_completed(t(9), "high", CompletedBy::Agent)
        .expect("done");
    let acts = drain(&mut e);
    assert_eq!(logs(&acts, "COMPLETEAGENT")[0].data, ["2", "5", "1"]);
    assert_eq!(offers(&acts), [("low".to_string(), "PJSIP/a".to_string())]);
}

#[test]
fn autofill_serves_callers_in_parallel_serial_only_the_head() {
    let members = ["PJSIP/a", "PJSIP/b", "PJSIP/c"];
    let mut serial = engine(vec![queue("q", Strategy::Linear, &members)]);
    let mut c = queue("q", Strategy::Linear, &members);
    c.autofill = true;
    let mut auto = engine(vec![c]);
    for e in [&mut serial, &mut auto] {
        for m in members {
            e.device_state(t(0), m, DeviceState::InUse);
        }
        for i in 0..3 {
            e.join(t(1), Join::new(format!("c{i}"), "q")).expect("join");
        }
        drain(e);
        for m in members {
            e.device_state(t(2), m, DeviceState::NotInUse);
        }
    }
    assert_eq!(
        offers(&drain(&mut serial)),
        [("c0".to_string(), "PJSIP/a".to_string())]
    );
    let o = offers(&drain(&mut auto));
    assert_eq!(
        o,
        [
            ("c0".to_string(), "PJSIP/a".to_string()),
            ("c1".to_string(), "PJSIP/b".to_string()),
            ("c2".to_string(), "PJSIP/c".to_string())
        ]
    );
    // Serial: the second caller is served once the head has left.
    serial
        .offer_outcome(
            t(3),
            serial.offer_of("PJSIP/a").expect("offer"),
            OfferOutcome::Answered,
        )
        .expect("answer");
    assert_eq!(
        offers(&drain(&mut serial)),
        [("c1".to_string(), "PJSIP/b".to_string())]
    );
}

#[test]
fn pause_and_unpause_with_reason() {
    let mut e = engine(vec![
        queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"]),
        queue("r", Strategy::Linear, &["PJSIP/a"]),
    ]);
    e.pause(t(0), "PJSIP/a", None, "lunch").expect("pause");
    let acts = drain(&mut e);
    let p = logs(&acts, "PAUSE");
    assert_eq!(p.len(), 2, "all queues");
    assert_eq!(p[0].line(), "0|NONE|q|PJSIP/a|PAUSE|lunch");
    assert_eq!(
        e.member_stats("r", "PJSIP/a").expect("m").pause_reason,
        "lunch"
    );
    e.join(t(1), Join::new("c", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e))[0].1, "PJSIP/b");
    e.join(t(1), Join::new("d", "r")).expect("join");
    assert!(offers(&drain(&mut e)).is_empty());
    e.unpause(t(2), "PJSIP/a", Some("r"), "back")
        .expect("unpause");
    let acts = drain(&mut e);
    assert_eq!(logs(&acts, "UNPAUSE")[0].data, ["back"]);
    assert_eq!(offers(&acts), [("d".to_string(), "PJSIP/a".to_string())]);
    assert!(e.pause(t(3), "PJSIP/zz", None, "").is_err());
}

#[test]
fn abandon_and_timeout_log_positions_and_wait() {
    let mut e = engine(vec![queue("q", Strategy::RingAll, &["PJSIP/a"])]);
    e.device_state(t(0), "PJSIP/a", DeviceState::InUse);
    e.join(t(0), Join::new("1", "q")).expect("join");
    e.join(t(1), Join::new("2", "q")).expect("join");
    let mut vip = Join::new("3", "q");
    vip.place.priority = 5;
    assert_eq!(e.join(t(2), vip), Ok(1), "priority goes first");
    let mut w = Join::new("4", "q");
    w.max_wait = Some(t(30));
    assert_eq!(e.join(t(3), w), Ok(4));
    drain(&mut e);
    e.leave(t(12), "2").expect("leave");
    let acts = drain(&mut e);
    assert_eq!(
        logs(&acts, "ABANDON")[0].line(),
        "12|2|q|NONE|ABANDON|3|2|11"
    );
    assert_eq!(e.waiting_callers("q"), ["3", "1", "4"]);
    e.handle_timeout(t(33));
    let acts = drain(&mut e);
    assert_eq!(logs(&acts, "EXITWITHTIMEOUT")[0].data, ["3", "4", "30"]);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::CallerRemoved {
            reason: ExitReason::Timeout,
            ..
        }
    )));
    // Abandon while ringing cancels the offer.
    e.device_state(t(40), "PJSIP/a", DeviceState::NotInUse);
    assert_eq!(offers(&drain(&mut e))[0].0, "3");
    e.leave(t(41), "3").expect("leave");
    let acts = drain(&mut e);
    assert_eq!(cancels(&acts), ["PJSIP/a"]);
    assert_eq!(logs(&acts, "RINGCANCELED").len(), 1);
    assert_eq!(
        offers(&acts)[0].0,
        "1",
        "freed member goes to the next caller"
    );
    let st = e.queue_stats("q").expect("q");
    assert_eq!((st.abandoned, st.timed_out, st.joined), (2, 1, 4));
}

#[test]
fn member_in_two_queues_gets_one_offer_at_a_time() {
    let mut e = engine(vec![
        queue("q1", Strategy::RingAll, &["PJSIP/a", "PJSIP/b"]),
        queue("q2", Strategy::RingAll, &["PJSIP/a"]),
    ]);
    e.join(t(0), Join::new("x", "q1")).expect("join");
    e.join(t(0), Join::new("y", "q2")).expect("join");
    let o = offers(&drain(&mut e));
    assert_eq!(
        o,
        [
            ("x".to_string(), "PJSIP/a".to_string()),
            ("x".to_string(), "PJSIP/b".to_string())
        ]
    );
    assert_eq!(e.offered_caller("PJSIP/a"), Some("x"));
    e.offer_outcome(
        t(1),
        e.offer_of("PJSIP/b").expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    let acts = drain(&mut e);
    assert_eq!(cancels(&acts), ["PJSIP/a"]);
    assert_eq!(offers(&acts), [("y".to_string(), "PJSIP/a".to_string())]);
}

#[test]
fn dynamic_members_and_statistics() {
    let mut c = queue("q", Strategy::Linear, &["PJSIP/a"]);
    c.servicelevel = 10;
    let mut e = engine(vec![c]);
    assert_eq!(
        e.remove_member(t(0), "q", "PJSIP/a"),
        Err(EngineError::NotDynamic {
            queue: "q".into(),
            interface: "PJSIP/a".into()
        })
    );
    e.add_member(
        t(0),
        "q",
        MemberConfig::new("PJSIP/b").penalty(0).paused(true),
    )
    .expect("add");
    assert_eq!(logs(&drain(&mut e), "ADDMEMBER")[0].data, ["PAUSED"]);
    assert!(e
        .add_member(t(0), "q", MemberConfig::new("pjsip/B"))
        .is_err());
    e.device_state(t(0), "PJSIP/a", DeviceState::InUse);
    e.join(t(0), Join::new("1", "q")).expect("join");
    e.unpause(t(5), "PJSIP/b", None, "").expect("unpause");
    let o = offers(&drain(&mut e));
    assert_eq!(o[0].1, "PJSIP/b");
    e.offer_outcome(
        t(5),
        e.offer_of("PJSIP/b").expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    hangup(&mut e, t(65), "1");
    e.join(t(70), Join::new("2", "q")).expect("join");
    e.remove_member(t(71), "q", "PJSIP/b").expect("remove");
    let acts = drain(&mut e);
    assert_eq!(
        cancels(&acts),
        ["PJSIP/b"],
        "offer to removed member cancelled"
    );
    assert_eq!(logs(&acts, "REMOVEMEMBER").len(), 1);
    e.device_state(t(90), "PJSIP/a", DeviceState::NotInUse);
    e.offer_outcome(
        t(90),
        e.offer_of("PJSIP/a").expect("offer"),
        OfferOutcome::Answered,
    )
    .expect("answer");
    let st = e.queue_stats("q").expect("q").clone();
    assert_eq!(st.answered, 2);
    assert_eq!(st.answered_within_sl, 1);
    assert_eq!(st.service_level(), Some(0.5));
    assert_eq!(st.average_wait(), Some(t(12) + ms(500)));
    assert_eq!(st.completed, 1);
    assert_eq!(st.last_call, Some(t(65)));
}

#[test]
fn config_loads_from_toml() {
    let cfg: EngineConfig = toml::from_str(
        r#"
        shared_lastcall = true
        seed = 42
        [rules]
        vip = ["30,+2", "60,10,1"]
        [[queues]]
        name = "sales"
        strategy = "roundrobin"
        timeout = 20
        wrapuptime = 5
        ringinuse = false
        joinempty = "penalty,paused"
        members = ["PJSIP/1000,1,Alice,PJSIP/1000,no,10,yes",
                   { interface = "PJSIP/1001", penalty = 2 }]
        "#,
    )
    .expect("toml");
    let q = &cfg.queues[0];
    assert_eq!(q.strategy, Strategy::RrMemory);
    assert_eq!(q.retry, 5);
    assert_eq!(q.members[0].name.as_deref(), Some("Alice"));
    assert_eq!(q.members[0].wrapuptime, Some(10));
    assert!(q.members[0].paused);
    assert_eq!(q.members[1].penalty, 2);
    assert!(q.joinempty.contains(EmptyConditions::PAUSED));
    assert!(Engine::new(&cfg).is_ok());
    let bad: Result<EngineConfig, _> = toml::from_str("[[queues]]\nname='x'\nstrategy='nope'");
    assert!(bad.is_err());
    let mut badrule = cfg.clone();
    badrule.rules.insert("x".into(), vec!["abc".into()]);
    assert!(matches!(
        Engine::new(&badrule),
        Err(EngineError::BadRule(_))
    ));
}

#[test]
fn members_load_as_a_queues_conf_line_or_a_table_with_defaults() {
    #[derive(serde::Deserialize)]
    struct Members {
        members: Vec<MemberConfig>,
    }
    let m: Members = toml::from_str(
        r#"members = [
            "PJSIP/1000,1,Alice,Custom:1000,no,10,yes",
            { interface = "PJSIP/1001" },
            { interface = "PJSIP/1002", penalty = 2, name = "Bob", state_interface = "Custom:1002",
              ringinuse = true, wrapuptime = 7, paused = true },
        ]"#,
    )
    .expect("toml");
    let full = |i: &str, s: &str| MemberConfig::new(i).state_interface(s).paused(true);
    assert_eq!(
        m.members,
        [
            full("PJSIP/1000", "Custom:1000")
                .penalty(1)
                .name("Alice")
                .ringinuse(false)
                .wrapuptime(10),
            MemberConfig::new("PJSIP/1001"),
            full("PJSIP/1002", "Custom:1002")
                .penalty(2)
                .name("Bob")
                .ringinuse(true)
                .wrapuptime(7),
        ]
    );
    for bad in [
        r#"members = ["PJSIP/1000,x"]"#,
        r#"members = [{ penalty = 1 }]"#,
        r#"members = [{ interface = "PJSIP/1000", penalty = "x" }]"#,
    ] {
        let e = toml::from_str::<Members>(bad).err();
        assert!(e.is_some(), "{bad} accepted");
    }
    let e = toml::from_str::<Members>(r#"members = ["PJSIP/1000,x"]"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("bad penalty"), "{e}");
}

/// Random event streams: never two simultaneous offers for one member, never a panic, offers
/// only for waiting callers.
#[test]
fn property_random_streams_keep_one_offer_per_member() {
    let strategies = [
        Strategy::RingAll,
        Strategy::LeastRecent,
        Strategy::FewestCalls,
        Strategy::Random,
        Strategy::RrMemory,
        Strategy::RrOrdered,
        Strategy::Linear,
        Strategy::WRandom,
    ];
    let agents: Vec<String> = (0..8).map(|i| format!("PJSIP/{i}")).collect();
    for seed in 0..150u64 {
        let mut rng = Rng::new(seed);
        let mut queues = Vec::new();
        for qi in 0..4 {
            let mut c = QueueConfig::new(format!("q{qi}"));
            c.strategy = strategies[rng.below(8) as usize];
            c.autofill = rng.below(2) == 0;
            c.ringinuse = rng.below(2) == 0;
            c.weight = rng.below(3) as i32;
            c.wrapuptime = rng.below(3);
            c.retry = rng.below(3);
            c.timeout = rng.below(4);
            c.maxlen = rng.below(5) as usize;
            c.leavewhenempty = if rng.below(4) == 0 {
                EmptyConditions::parse("unavailable,paused", false).expect("lwe")
            } else {
                EmptyConditions::NONE
            };
            for a in &agents {
                if rng.below(2) == 0 {
                    c.members
                        .push(MemberConfig::new(a.clone()).penalty(rng.below(3) as i32));
                }
            }
            queues.push(c);
        }
        let mut rules = HashMap::new();
        rules.insert(
            "r".to_string(),
            vec!["2,+1".to_string(), "4,-1,1".to_string()],
        );
        let mut e = Engine::new(&EngineConfig {
            queues,
            rules,
            shared_lastcall: seed % 2 == 0,
            seed,
        })
        .expect("engine");
        let mut now = Duration::ZERO;
        let mut offered: HashMap<String, String> = HashMap::new(); // iface -> caller
        let mut ids: HashMap<String, OfferId> = HashMap::new(); // iface -> offer
        let mut waiting: Vec<String> = Vec::new();
        let mut connected: Vec<String> = Vec::new();
        let mut next_id = 0;
        for _ in 0..600 {
            now += ms(rng.below(1500));
            let pick = |rng: &mut Rng, v: &Vec<String>| -> Option<String> {
                (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize].clone())
            };
            let a = agents[rng.below(agents.len() as u64) as usize].clone();
            let q = format!("q{}", rng.below(5)); // q4 does not exist
            match rng.below(12) {
                0 | 1 => {
                    next_id += 1;
                    let mut j = Join::new(format!("c{next_id}"), q);
                    j.place.priority = rng.below(3) as i32;
                    if rng.below(3) == 0 {
                        j.penalties.max = Some(rng.below(3) as i32);
                        j.rule = Some("r".into());
                    }
                    if rng.below(3) == 0 {
                        j.max_wait = Some(t(rng.below(20)));
                    }
                    if e.join(now, j).is_ok() {
                        waiting.push(format!("c{next_id}"));
                    }
                }
                2 => {
                    if let Some(c) = pick(&mut rng, &waiting) {
                        let _ = e.leave(now, &c);
                    }
                }
                3 | 4 => {
                    let st = DeviceState::ALL[rng.below(9) as usize];
                    e.device_state(now, &a.to_lowercase(), st);
                }
                5 | 6 => {
                    let pending: Vec<(String, String)> = offered
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !pending.is_empty() {
                        let (iface, _caller) = &pending[rng.below(pending.len() as u64) as usize];
                        let outcome = [
                            OfferOutcome::Answered,
                            OfferOutcome::NoAnswer,
                            OfferOutcome::Busy,
                        ][rng.below(3) as usize];
                        // The call may lose a race with a timer that fires first (same
                        // `now`): then the offer is already cancelled and NoSuchOffer returned.
                        let res = e.offer_outcome(now, ids[iface], outcome);
                        if let Err(err) = &res {
                            assert!(matches!(err, EngineError::NoSuchOffer { .. }), "{err}");
                        }
                        if res.is_ok() && outcome != OfferOutcome::Answered {
                            offered.remove(iface);
                        }
                    }
                }
                7 => {
                    if let Some(c) = pick(&mut rng, &connected) {
                        if e.call_completed(now, &c, CompletedBy::Agent).is_ok() {
                            connected.retain(|x| *x != c);
                        }
                    }
                }
                8 => {
                    let _ = if rng.below(2) == 0 {
                        e.pause(now, &a, None, "x")
                    } else {
                        e.unpause(now, &a, Some(&q), "")
                    };
                }
                9 => {
                    let _ = if rng.below(2) == 0 {
                        e.add_member(
                            now,
                            &q,
                            MemberConfig::new(a.clone()).penalty(rng.below(3) as i32),
                        )
                    } else {
                        e.remove_member(now, &q, &a)
                    };
                }
                10 => {
                    let _ = e.set_penalty(now, &a, None, rng.below(3) as i32);
                }
                _ => {
                    if let Some(d) = e.poll_timeout() {
                        now = now.max(d);
                    }
                    e.handle_timeout(now);
                }
            }
            while let Some(act) = e.poll_action() {
                if std::env::var("PROP_DEBUG").is_ok() {
                    eprintln!("{seed} {now:?} {act:?}");
                }
                match act {
                    Action::Offer {
                        id,
                        caller,
                        interface,
                        ..
                    } => {
                        assert!(waiting.contains(&caller), "offer for a waiting caller");
                        ids.insert(interface.clone(), id);
                        let prev = offered.insert(interface.clone(), caller.clone());
                        assert!(prev.is_none(), "seed {seed}: {interface} offered twice");
                    }
                    Action::CancelOffer {
                        id,
                        caller,
                        interface,
                        ..
                    } => {
                        assert_eq!(ids.get(&interface), Some(&id));
                        assert_eq!(offered.remove(&interface), Some(caller));
                    }
                    Action::Connect {
                        caller, interface, ..
                    } => {
                        assert_eq!(offered.remove(&interface), Some(caller.clone()));
                        waiting.retain(|x| *x != caller);
                        connected.push(caller);
                    }
                    Action::CallerRemoved { caller, .. } => {
                        waiting.retain(|x| *x != caller);
                    }
                    Action::QueueLog(l) => {
                        if l.event == "ABANDON" {
                            waiting.retain(|x| *x != l.callid);
                        }
                    }
                }
            }
            for (iface, c) in &offered {
                assert!(
                    waiting.contains(c),
                    "seed {seed}: offer left for gone caller {c}"
                );
                assert_eq!(e.offered_caller(iface), Some(c.as_str()), "seed {seed}");
                assert_eq!(e.offer_of(iface), ids.get(iface).copied(), "seed {seed}");
            }
            for a in &agents {
                if let Some(c) = e.offered_caller(a) {
                    assert_eq!(offered.get(a).map(String::as_str), Some(c), "seed {seed}");
                }
            }
            // Timers never lie in the past.
            if let Some(d) = e.poll_timeout() {
                assert!(d >= e.now(), "seed {seed}: timer {d:?} in the past");
            }
        }
    }
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let mut e = engine(vec![queue("q", Strategy::RingAll, &["PJSIP/a"])]);
    assert_eq!(
        e.join(t(5), Join::new("x", "nope")),
        Err(EngineError::UnknownQueue("nope".into()))
    );
    assert!(e.leave(t(5), "ghost").is_err());
    assert!(e.call_completed(t(5), "ghost", CompletedBy::Agent).is_err());
    assert!(e
        .offer_outcome(t(5), OfferId(999), OfferOutcome::Busy)
        .is_err());
    assert!(e.remove_member(t(5), "q", "").is_err());
    assert!(e.set_penalty(t(5), "PJSIP/a", Some("nope"), 1).is_err());
    e.device_state(t(5), "", DeviceState::Busy);
    e.device_state(t(5), "Queue:q_avail", DeviceState::InUse);
    // Time going backwards is clamped; huge times saturate.
    e.join(t(1), Join::new("x", "q")).expect("join");
    assert_eq!(
        e.join(t(1), Join::new("x", "q")),
        Err(EngineError::DuplicateCaller("x".into()))
    );
    let id = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(2), id, OfferOutcome::Answered)
        .expect("answer");
    e.call_completed(Duration::MAX, "x", CompletedBy::Caller)
        .expect("complete");
    let mut j = Join::new("y", "q");
    j.max_wait = Some(Duration::MAX);
    e.join(Duration::MAX, j).expect("join");
    e.handle_timeout(Duration::MAX);
    // Cascades at the saturated end of time terminate.
    for _ in 0..3 {
        let _ = e.poll_timeout();
        e.handle_timeout(Duration::MAX);
    }
    assert_eq!(e.queue_stats("q").expect("q").answered, 1);
    let bad: Result<MemberConfig, _> = ",1".parse();
    assert!(bad.is_err());
    assert!("PJSIP/a,x".parse::<MemberConfig>().is_err());
    assert!(EmptyConditions::parse("bogus", true).is_err());
}

#[test]
fn raise_penalty_and_leavewhenempty_penalty_factor() {
    // QUEUE_RAISE_PENALTY lifts low-penalty members into range of QUEUE_MIN_PENALTY.
    let mut e = engine(vec![queue(
        "q",
        Strategy::Linear,
        &["PJSIP/a,0", "PJSIP/b,3"],
    )]);
    let mut j = Join::new("c", "q");
    j.penalties.min = Some(2);
    j.penalties.raise = Some(2);
    e.join(t(0), j).expect("join");
    assert_eq!(
        offers(&drain(&mut e))[0].1,
        "PJSIP/a",
        "a raised to 2, ranks before b=3"
    );
    // leavewhenempty=penalty: every member outside the caller's range empties the queue.
    let mut c = queue("q", Strategy::Linear, &["PJSIP/a,0", "PJSIP/b,3"]);
    c.leavewhenempty = EmptyConditions::parse("penalty,unavailable", false).expect("lwe");
    let mut e = engine(vec![c]);
    e.device_state(t(0), "PJSIP/a", DeviceState::InUse);
    let mut j = Join::new("c", "q");
    j.penalties.max = Some(1);
    e.join(t(0), j).expect("join");
    assert!(offers(&drain(&mut e)).is_empty());
    e.device_state(t(4), "PJSIP/a", DeviceState::Unavailable);
    let acts = drain(&mut e);
    assert_eq!(
        logs(&acts, "EXITEMPTY")[0].data,
        ["1", "1", "4"],
        "b is out of range"
    );
}

/// Issue 15: a caller moved from a dead node joins with their original join time
/// (`Place::joined_at`) and takes their place among callers of the same priority; a join time
/// from the future counts as now.
#[test]
fn a_moved_caller_keeps_their_original_place() {
    let mut e = engine(vec![queue("q", Strategy::Linear, &[])]);
    e.join(t(10), Join::new("a", "q")).expect("a");
    e.join(t(20), Join::new("b", "q")).expect("b");
    let moved = |id: &str, at: u64, prio: i32| {
        let mut j = Join::new(id, "q");
        j.place.joined_at = Some(t(at));
        j.place.priority = prio;
        j
    };
    e.join(t(30), moved("c", 5, 0)).expect("c");
    e.join(t(31), moved("d", 15, 0)).expect("d");
    e.join(t(32), moved("e", 25, 1)).expect("e");
    e.join(t(33), moved("f", 100, 0)).expect("f");
    e.join(t(34), Join::new("g", "q")).expect("g");
    assert_eq!(e.waiting_callers("q"), ["e", "c", "a", "d", "b", "f", "g"]);
}
