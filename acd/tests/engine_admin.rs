//! Operator inputs and supervisor views of the engine, in virtual time: pause reasons and
//! PAUSEALL as app_queue logs them, autopause after N missed offers, the waiting list, members'
//! state with time in state, and reloading the configuration at run time.

use acd::engine::{AutoPause, AUTO_PAUSE_REASON};
use acd::{
    Action, DeviceState, Engine, EngineConfig, Join, OfferOutcome, QueueConfig, QueueLogEvent,
    Strategy,
};
use std::time::Duration;

fn t(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn queue(name: &str, strategy: Strategy, members: &[&str]) -> QueueConfig {
    let mut c = QueueConfig::new(name);
    c.strategy = strategy;
    c.ringinuse = false;
    c.retry = 1;
    c.timeout = 10;
    c.members = members.iter().map(|m| m.parse().expect("member")).collect();
    c
}

fn engine(queues: Vec<QueueConfig>) -> Engine {
    let cfg = EngineConfig {
        queues,
        ..Default::default()
    };
    let mut e = Engine::new(&cfg).expect("engine");
    for q in &cfg.queues {
        for m in &q.members {
            e.device_state(t(0), &m.interface, DeviceState::NotInUse);
        }
    }
    drain(&mut e);
    e
}

fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

fn offers(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Offer { interface, .. } => Some(interface.clone()),
            _ => None,
        })
        .collect()
}

fn lines(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::QueueLog(l) => Some(l.line()),
            _ => None,
        })
        .collect()
}

fn logs<'a>(acts: &'a [Action], event: &str) -> Vec<&'a QueueLogEvent> {
    acts.iter()
        .filter_map(|a| match a {
            Action::QueueLog(l) if l.event == event => Some(l),
            _ => None,
        })
        .collect()
}

/// app_queue's `set_member_paused` with no queue: one PAUSEALL line (callid and queue NONE,
/// the interface, empty data), then PAUSE per queue with the reason; UNPAUSE without reason
/// has empty data; the reason and time in pause are visible while paused and cleared after.
#[test]
fn pause_all_logs_pauseall_then_pause_per_queue() {
    let mut e = engine(vec![
        queue("q", Strategy::Linear, &["PJSIP/a"]),
        queue("r", Strategy::Linear, &["PJSIP/a"]),
    ]);
    e.pause(t(10), "PJSIP/a", None, "Lunch").expect("pause");
    let l = lines(&drain(&mut e));
    assert_eq!(
        l,
        [
            "10|NONE|NONE|PJSIP/a|PAUSEALL|",
            "10|NONE|q|PJSIP/a|PAUSE|Lunch",
            "10|NONE|r|PJSIP/a|PAUSE|Lunch",
        ]
    );
    e.handle_timeout(t(70));
    let v = &e.agents("q")[0];
    assert_eq!(v.paused, Some(("Lunch".to_string(), t(60))));
    assert!(!v.available);
    e.unpause(t(80), "PJSIP/a", Some("q"), "").expect("unpause");
    assert_eq!(lines(&drain(&mut e)), ["80|NONE|q|PJSIP/a|UNPAUSE|"]);
    assert_eq!(e.agents("q")[0].paused, None);
    assert_eq!(
        e.agents("r")[0].paused.as_ref().map(|p| p.0.as_str()),
        Some("Lunch")
    );
    let st = e.member_stats("q", "PJSIP/a").expect("member");
    assert!(!st.paused && st.pause_reason.is_empty() && st.paused_since.is_none());
}

/// autopause = yes with autopause_after = 2: the first missed offer only counts; the second
/// pauses the member in that queue with reason Auto-Pause, and the caller goes to the other
/// member. An answered offer resets the count.
#[test]
fn autopause_after_two_missed_offers() {
    let mut q = queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"]);
    q.autopause = AutoPause::Yes;
    q.autopause_after = 2;
    let mut other = queue("r", Strategy::Linear, &["PJSIP/a"]);
    other.autopause = AutoPause::No;
    let mut e = engine(vec![q, other]);
    e.join(t(0), Join::new("c1", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e)), ["PJSIP/a"]);
    // Ring timeout (10 s): RINGNOANSWER, a missed once; the retry 1 s later goes on to b.
    e.handle_timeout(t(10));
    let acts = drain(&mut e);
    assert_eq!(logs(&acts, "RINGNOANSWER").len(), 1);
    assert!(logs(&acts, "PAUSE").is_empty(), "one miss is not enough");
    e.handle_timeout(t(11));
    let acts = drain(&mut e);
    assert_eq!(
        offers(&acts),
        ["PJSIP/b"],
        "linear goes on from its position"
    );
    let b = e.offer_of("PJSIP/b").expect("offer to b");
    e.offer_outcome(t(12), b, OfferOutcome::NoAnswer)
        .expect("b");
    drain(&mut e);
    e.handle_timeout(t(13));
    assert_eq!(offers(&drain(&mut e)), ["PJSIP/a"]);
    let a = e.offer_of("PJSIP/a").expect("offer to a");
    e.offer_outcome(t(14), a, OfferOutcome::NoAnswer)
        .expect("a");
    let acts = drain(&mut e);
    assert_eq!(
        logs(&acts, "PAUSE")
            .iter()
            .map(|l| l.line())
            .collect::<Vec<_>>(),
        [format!("14|NONE|q|PJSIP/a|PAUSE|{AUTO_PAUSE_REASON}")],
        "paused in q only"
    );
    assert!(e.member_stats("q", "PJSIP/a").expect("a").paused);
    assert!(!e.member_stats("r", "PJSIP/a").expect("a in r").paused);
    // b missed once; answering now resets its count: two more misses are needed.
    e.handle_timeout(t(15));
    assert_eq!(offers(&drain(&mut e)), ["PJSIP/b"], "a is paused");
    let b = e.offer_of("PJSIP/b").expect("offer to b");
    e.offer_outcome(t(16), b, OfferOutcome::Answered)
        .expect("b answers");
    drain(&mut e);
    e.call_completed(t(20), "c1", acd::CompletedBy::Caller)
        .expect("done");
    drain(&mut e);
    e.join(t(21), Join::new("c2", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e)), ["PJSIP/b"]);
    let b = e.offer_of("PJSIP/b").expect("offer to b");
    e.offer_outcome(t(22), b, OfferOutcome::NoAnswer)
        .expect("b");
    let acts = drain(&mut e);
    assert!(
        logs(&acts, "PAUSE").is_empty(),
        "count was reset by the answer"
    );
    assert!(!e.member_stats("q", "PJSIP/b").expect("b").paused);
}

/// autopause = all pauses the member everywhere (PAUSEALL first); a busy refusal counts only
/// with autopausebusy.
#[test]
fn autopause_all_and_busy() {
    let mut q = queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"]);
    q.autopause = AutoPause::All;
    let r = queue("r", Strategy::Linear, &["PJSIP/a"]);
    let mut e = engine(vec![q.clone(), r.clone()]);
    e.join(t(0), Join::new("c1", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(1), a, OfferOutcome::Busy).expect("busy");
    let acts = drain(&mut e);
    assert!(
        logs(&acts, "PAUSE").is_empty(),
        "busy does not count by default"
    );
    assert_eq!(offers(&acts), ["PJSIP/b"]);

    q.autopausebusy = true;
    let mut e = engine(vec![q, r]);
    e.join(t(0), Join::new("c1", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(1), a, OfferOutcome::Busy).expect("busy");
    let l = lines(&drain(&mut e));
    let pauses: Vec<&String> = l.iter().filter(|l| l.contains("PAUSE")).collect();
    assert_eq!(
        pauses,
        [
            "1|NONE|NONE|PJSIP/a|PAUSEALL|",
            "1|NONE|q|PJSIP/a|PAUSE|Auto-Pause",
            "1|NONE|r|PJSIP/a|PAUSE|Auto-Pause",
        ]
    );
}

/// The waiting list: position order follows priority, then arrival; wait grows with time;
/// the head being rung is marked.
#[test]
fn waiting_list_in_position_order() {
    let mut e = engine(vec![queue("q", Strategy::Linear, &["PJSIP/a"])]);
    e.pause(t(0), "PJSIP/a", None, "").expect("pause");
    e.join(t(1), Join::new("c1", "q")).expect("join");
    e.join(t(2), Join::new("c2", "q")).expect("join");
    let mut vip = Join::new("c3", "q");
    vip.place.priority = 5;
    e.join(t(3), vip).expect("join");
    e.handle_timeout(t(10));
    let w = e.waiting("q");
    let got: Vec<(&str, usize, usize, i32, u64, bool)> = w
        .iter()
        .map(|c| {
            (
                c.caller.as_str(),
                c.position,
                c.original_position,
                c.priority,
                c.wait.as_secs(),
                c.ringing,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("c3", 1, 1, 5, 7, false),
            ("c1", 2, 1, 0, 9, false),
            ("c2", 3, 2, 0, 8, false),
        ]
    );
    e.unpause(t(11), "PJSIP/a", None, "").expect("unpause");
    drain(&mut e);
    assert!(e.waiting("q")[0].ringing);
    assert_eq!(e.waiting("q")[0].caller, "c3");
}

/// Members' device state and time in state.
#[test]
fn agents_view_state_and_time_in_state() {
    let mut e = engine(vec![queue("q", Strategy::Linear, &["PJSIP/a"])]);
    e.device_state(t(5), "PJSIP/a", DeviceState::InUse);
    e.handle_timeout(t(65));
    let v = &e.agents("q")[0];
    assert_eq!(v.state, DeviceState::InUse);
    assert_eq!(v.state_for, t(60));
    assert!(!v.available);
}

/// Reload: a new static member is added and gets the next caller; a removed static member
/// leaves; a new queue appears; a queue missing from the new configuration is kept; settings
/// are replaced; CONFIGRELOAD is logged.
#[test]
fn reload_reconciles_queues_and_static_members() {
    let mut e = engine(vec![
        queue("q", Strategy::Linear, &["PJSIP/a"]),
        queue("old", Strategy::Linear, &["PJSIP/a"]),
    ]);
    e.add_member(t(0), "q", "PJSIP/d".parse().expect("m"))
        .expect("dynamic");
    let mut q2 = queue("q", Strategy::Linear, &["PJSIP/b"]);
    q2.timeout = 7;
    let cfg = EngineConfig {
        queues: vec![q2, queue("new", Strategy::RingAll, &["PJSIP/c"])],
        ..Default::default()
    };
    let r = e.reload(t(1), &cfg).expect("reload");
    assert_eq!(r.added_queues, ["new"]);
    assert_eq!(r.updated_queues, ["q"]);
    assert_eq!(r.kept_queues, ["old"]);
    assert_eq!(e.member_interfaces("q"), ["PJSIP/d", "PJSIP/b"]);
    assert_eq!(e.queue_config("q").expect("q").timeout, 7);
    let acts = drain(&mut e);
    assert_eq!(
        lines(&acts).last().map(String::as_str),
        Some("1|NONE|NONE|NONE|CONFIGRELOAD|")
    );
    e.device_state(t(2), "PJSIP/b", DeviceState::NotInUse);
    e.device_state(t(2), "PJSIP/d", DeviceState::Unavailable);
    e.join(t(3), Join::new("c1", "q")).expect("join");
    assert_eq!(offers(&drain(&mut e)), ["PJSIP/b"]);
}

/// autopauseunavail: a phone that cannot take the call (Asterisk's CONGESTION) counts as a
/// miss only with it, and busy does not stand in for it (app_queue's `rna()` on CONGESTION).
#[test]
fn autopause_unavailable_counts_only_with_autopauseunavail() {
    let mut q = queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"]);
    q.autopause = AutoPause::Yes;
    q.autopausebusy = true;
    let mut e = engine(vec![q.clone()]);
    e.join(t(0), Join::new("c1", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(1), a, OfferOutcome::Unavailable)
        .expect("unavailable");
    let acts = drain(&mut e);
    assert!(
        logs(&acts, "PAUSE").is_empty(),
        "not without autopauseunavail"
    );
    assert_eq!(offers(&acts), ["PJSIP/b"], "the next member at once");

    q.autopausebusy = false;
    q.autopauseunavail = true;
    let mut e = engine(vec![q]);
    e.join(t(0), Join::new("c1", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(1), a, OfferOutcome::Unavailable)
        .expect("unavailable");
    let l = lines(&drain(&mut e));
    assert!(
        l.contains(&"1|NONE|q|PJSIP/a|PAUSE|Auto-Pause".to_owned()),
        "{l:?}"
    );
}

/// autopausedelay: a miss within the delay after the member's last call ended does not count;
/// the same miss later does (virtual time).
#[test]
fn autopausedelay_spares_a_member_just_after_a_call() {
    let mut q = queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"]);
    q.autopause = AutoPause::Yes;
    q.autopausedelay = 30;
    q.retry = 0;
    let mut e = engine(vec![q]);
    // a takes a call that ends at t=10.
    e.join(t(0), Join::new("c1", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(1), a, OfferOutcome::Answered)
        .expect("answer");
    drain(&mut e);
    e.call_completed(t(10), "c1", acd::CompletedBy::Caller)
        .expect("done");
    drain(&mut e);
    // 20 s later (inside the 30 s delay) a misses an offer: no pause.
    e.join(t(30), Join::new("c2", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(31), a, OfferOutcome::NoAnswer)
        .expect("no answer");
    let acts = drain(&mut e);
    assert!(logs(&acts, "PAUSE").is_empty(), "within autopausedelay");
    assert!(!e.member_stats("q", "PJSIP/a").expect("a").paused);
    let b = e.offer_of("PJSIP/b").expect("b next");
    e.offer_outcome(t(32), b, OfferOutcome::Answered)
        .expect("b answers");
    drain(&mut e);
    e.call_completed(t(33), "c2", acd::CompletedBy::Caller)
        .expect("done");
    drain(&mut e);
    // 40 s after a's call (past the delay): the miss counts.
    e.join(t(50), Join::new("c3", "q")).expect("join");
    drain(&mut e);
    let a = e.offer_of("PJSIP/a").expect("offer");
    e.offer_outcome(t(51), a, OfferOutcome::NoAnswer)
        .expect("no answer");
    let l = lines(&drain(&mut e));
    assert!(
        l.contains(&"51|NONE|q|PJSIP/a|PAUSE|Auto-Pause".to_owned()),
        "{l:?}"
    );
    assert!(e.member_stats("q", "PJSIP/a").expect("a").paused);
}

/// Runtime member state survives a restart (persistentmembers): what `runtime_members` keeps
/// (a pause with its reason, a dynamic member, a changed penalty; not an untouched static
/// member) is re-applied by `restore_members` to an engine built from the configuration; a
/// static member the configuration dropped and a queue it dropped are skipped and named. The
/// paused member is not offered the next caller.
#[test]
fn runtime_members_restore_into_a_fresh_engine() {
    let cfg = || {
        vec![
            queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b", "PJSIP/c"]),
            queue("r", Strategy::Linear, &["PJSIP/a"]),
        ]
    };
    let mut e = engine(cfg());
    e.pause(t(1), "PJSIP/a", Some("q"), "Lunch").expect("pause");
    let mut dynamic = acd::MemberConfig::new("PJSIP/d");
    dynamic.penalty = 2;
    dynamic.state_interface = Some("Custom:d".into());
    e.add_member(t(2), "q", dynamic).expect("add");
    e.set_penalty(t(3), "PJSIP/c", Some("q"), 7)
        .expect("penalty");
    e.pause(t(4), "PJSIP/a", Some("r"), "Break")
        .expect("pause r");
    drain(&mut e);
    let rows = e.runtime_members();
    let keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.queue.as_str(), r.member.interface.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("q", "PJSIP/a"),
            ("q", "PJSIP/c"),
            ("q", "PJSIP/d"),
            ("r", "PJSIP/a")
        ],
        "b is as configured"
    );
    assert_eq!(rows[2].member.state_interface.as_deref(), Some("custom:d"));

    // Restart with c gone from the configuration and queue r gone.
    let mut fresh = engine(vec![queue("q", Strategy::Linear, &["PJSIP/a", "PJSIP/b"])]);
    let skipped = fresh.restore_members(t(0), &rows);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].contains("PJSIP/c") && skipped[0].contains("no longer a member"));
    assert!(
        skipped[1].contains("r: queue not configured"),
        "{skipped:?}"
    );
    let v = fresh.agents("q");
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].paused.as_ref().map(|p| p.0.as_str()), Some("Lunch"));
    // Paused at t(1) and kept at t(4): the restored pause is 3 s old, not new.
    assert_eq!(rows[0].paused_for, t(3));
    assert_eq!(v[0].paused.as_ref().map(|p| p.1), Some(t(3)));
    assert_eq!(v[1].paused, None);
    assert!(v[2].dynamic && v[2].interface == "PJSIP/d" && v[2].penalty == 2);
    fresh.device_state(t(0), "custom:d", DeviceState::NotInUse);
    drain(&mut fresh);
    fresh.join(t(1), Join::new("c1", "q")).expect("join");
    assert_eq!(offers(&drain(&mut fresh)), ["PJSIP/b"], "a stays paused");
    // What it keeps now is what it was given (less the skipped rows), the pause a second
    // longer.
    let again = fresh.runtime_members();
    let mut longer = rows[0].clone();
    longer.paused_for = t(4);
    assert_eq!(again, vec![longer, rows[2].clone()]);
    assert_eq!(
        fresh.agents("q")[0].paused.as_ref().map(|p| p.1),
        Some(t(4))
    );
    // A new pause (another reason) starts a new clock.
    fresh
        .pause(t(1), "PJSIP/a", Some("q"), "Meeting")
        .expect("pause again");
    assert_eq!(
        fresh.agents("q")[0].paused.as_ref().map(|p| p.1),
        Some(t(0))
    );
}
