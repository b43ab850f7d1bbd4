//! Graceful shutdown of call control in virtual time: drain (503 + Retry-After to new callers,
//! calls in progress untouched), finish (BYE to every caller and connected agent,
//! COMPLETECALLER / ABANDON), the bounded wait for the BYEs.

use super::super::shutdown::retry_after;
use super::*;

/// PJSIP/2001 connected to caller 1001; caller 1002 waiting (PJSIP/2002 busy).
fn connected_and_waiting() -> (Rig, CallerLeg, Request, CallerLeg) {
    let mut rig = Rig::support();
    let (c1, inv) = rig.connected_call();
    rig.state("PJSIP/2002", DeviceState::InUse);
    let c2 = rig.caller("500", "1002");
    assert_eq!(rig.offers_to("2002"), 0, "the second caller waits");
    assert_eq!(rig.core.callers(), 2);
    (rig, c1, inv, c2)
}

#[test]
fn draining_refuses_new_callers_with_503_and_retry_after_and_leaves_calls_alone() {
    let (mut rig, c1, inv, c2) = connected_and_waiting();
    assert!(!rig.core.is_draining());
    rig.core.drain(60);
    rig.pump();
    assert!(rig.core.is_draining());
    let late = rig.dial("500", "1003");
    let r = rig.final_to(&late).expect("an answer to the new caller");
    assert_eq!(r.status_code.code(), 503);
    assert_eq!(retry_after(&r), Some(60), "Retry-After as configured");
    assert_eq!(rig.core.callers(), 2, "the new caller is not queued");
    assert!(rig.log("ENTERQUEUE").iter().all(|e| e.data[1] != "1003"));
    // The calls in progress go on: no BYE to anyone, not idle.
    rig.secs(20.0);
    assert!(rig.sent(Method::Bye).is_empty());
    assert!(!rig.core.is_idle());
    assert!(rig.core.finish_report().is_none());
    // The waiting caller is still offered when an agent frees up.
    rig.state("PJSIP/2002", DeviceState::NotInUse);
    assert_eq!(rig.offers_to("2002"), 1);
    let _ = (c1, inv, c2);
}

#[test]
fn finish_hangs_up_connected_and_waiting_callers_completecaller_and_abandon() {
    let (mut rig, c1, inv, c2) = connected_and_waiting();
    rig.secs(10.0);
    rig.core.finish(rig.now);
    rig.pump();
    for (who, cid) in [
        ("the connected caller", call_id(&c1.invite.headers)),
        ("its agent", call_id(&inv.headers)),
        ("the waiting caller", call_id(&c2.invite.headers)),
    ] {
        assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1, "a BYE to {who}");
    }
    assert_eq!(rig.sent(Method::Bye).len(), 3, "nothing else");
    let done = rig.log("COMPLETECALLER");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].agent, "PJSIP/2001");
    assert_eq!(done[0].data[1], "10", "talked 10 s");
    assert_eq!(rig.log("ABANDON").len(), 1, "the waiting caller leaves");
    assert!(rig.log("COMPLETEAGENT").is_empty());
    assert_eq!((rig.core.callers(), rig.core.agent_calls()), (0, 0));
    // The test's gateway answered every BYE at once: done.
    assert!(rig.core.is_idle());
    assert_eq!(
        rig.core.finish_report(),
        Some(FinishReport {
            callers_ended: 2,
            byes_unanswered: 0,
            rows_written: 0,
        })
    );
    // Still refusing, and a second finish changes nothing.
    let late = rig.dial("500", "1003");
    assert_eq!(rig.final_to(&late).map(|r| r.status_code.code()), Some(503));
    rig.core.finish(rig.now);
    rig.pump();
    assert_eq!(rig.sent(Method::Bye).len(), 3);
}

#[test]
fn finish_waits_for_its_byes_at_most_64_t1_capped_at_5_s() {
    let (mut rig, _c1, _inv, _c2) = connected_and_waiting();
    rig.byes_unanswered = true;
    let t0 = rig.now;
    rig.core.finish(t0);
    rig.pump();
    assert_eq!(rig.sent(Method::Bye).len(), 3);
    assert!(!rig.core.is_idle(), "waiting for the BYEs");
    // 64·T1 is 32 s here: the cap, 5 s, is the bound; the timer is data.
    assert!(rig
        .core
        .poll_timeout()
        .is_some_and(|t| t <= t0 + BYE_WAIT_CAP));
    rig.secs(4.9);
    assert!(!rig.core.is_idle());
    assert!(
        rig.sent(Method::Bye).len() > 3,
        "BYEs retransmitted meanwhile"
    );
    rig.secs(0.2);
    assert!(rig.core.is_idle(), "given up after 5 s");
    assert_eq!(
        rig.core
            .finish_report()
            .map(|r| (r.callers_ended, r.byes_unanswered)),
        Some((2, 3))
    );
}

#[test]
fn a_bye_answered_late_within_the_bound_ends_the_wait_then() {
    let mut rig = Rig::support();
    let _c = rig.caller("500", "1001");
    rig.state("PJSIP/2001", DeviceState::InUse);
    rig.state("PJSIP/2002", DeviceState::InUse);
    rig.byes_unanswered = true;
    rig.core.finish(rig.now);
    rig.pump();
    let byes = rig.sent(Method::Bye);
    assert!(!byes.is_empty());
    rig.secs(2.0);
    assert!(!rig.core.is_idle());
    let (from, bye) = byes[0].clone();
    let ok = message::response_for(&bye, 200, "");
    rig.deliver(ok.into(), from);
    rig.pump();
    assert!(rig.core.is_idle(), "the 200 to the BYE ends the wait");
    assert_eq!(rig.core.finish_report().map(|r| r.byes_unanswered), Some(0));
}

#[test]
fn finish_with_no_caller_is_idle_at_once() {
    let mut rig = Rig::support();
    assert!(!rig.core.is_idle(), "not finishing");
    rig.core.finish(rig.now);
    rig.pump();
    assert!(rig.core.is_idle());
    assert!(rig.sent(Method::Bye).is_empty());
    assert_eq!(rig.core.finish_report(), Some(FinishReport::default()));
}
