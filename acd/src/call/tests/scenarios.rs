//! More of the call-control scenarios in virtual time, each beyond what `tests.rs`
//! covers: callers served in order, hang-ups that cross (both sides at once, the caller gone
//! while the agent's 200 crosses our CANCEL), a lone member that never answers, every member
//! refusing, announcements that end with the wait, leaving an emptied queue, hot-desking with
//! another device prefix and twice.

use super::*;
use crate::engine::EmptyConditions;

fn code(r: Option<Response>) -> Option<u16> {
    r.map(|r| r.status_code.code())
}

/// Every relay leg opened was closed.
fn all_legs_closed(rig: &Rig) -> bool {
    let m = rig.core.media();
    m.open.iter().all(|l| m.closed.contains(l))
}

/// Offers cancelled (distinct Call-IDs: the test's gateway leaves CANCELs unanswered, so
/// they are retransmitted).
fn cancelled(rig: &Rig) -> usize {
    let mut ids: Vec<String> = (rig.sent(Method::Cancel).into_iter())
        .map(|(_, r)| call_id(&r.headers))
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

#[test]
fn callers_are_queued_in_order_and_served_one_after_the_other_by_one_agent() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let (mut first, inv1) = rig.connected_call();
    rig.state("PJSIP/2001", DeviceState::InUse);
    let second = rig.caller("500", "1002");
    let enter = rig.log("ENTERQUEUE");
    assert_eq!(enter.len(), 2);
    assert_eq!(enter[1].callid, "acd-test-2");
    assert_eq!(enter[1].data, ["", "1002", "1"], "first in line: 1");
    let third = rig.caller("500", "1003");
    assert_eq!(rig.log("ENTERQUEUE")[2].data, ["", "1003", "2"]);
    rig.secs(30.0);
    assert_eq!(rig.offers_to("2001"), 1, "a busy agent is not offered");
    assert_eq!(
        rig.core.engine().waiting_callers("support"),
        ["acd-test-2", "acd-test-3"]
    );
    rig.hang_up_caller(&mut first);
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    assert_eq!(
        rig.offers_to("2001"),
        2,
        "the agent is free: the next caller"
    );
    let (_, inv2) = rig.offer_to("2001").expect("second offer");
    assert_ne!(call_id(&inv2.headers), call_id(&inv1.headers));
    assert!(
        from_of(&inv2.headers).starts_with(&format!("<sip:1002@{GW}>")),
        "the first waiting caller, not the last: {}",
        from_of(&inv2.headers)
    );
    rig.agent_answers(&inv2, 200, GW);
    let connect = rig.log("CONNECT");
    assert_eq!(connect.len(), 2);
    assert_eq!(connect[1].callid, "acd-test-2");
    assert_eq!(connect[1].data[0], "30", "waited 30 s");
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-3"]);
    let m = rig.core.media();
    assert_eq!(m.bridged.len(), 2);
    assert!(
        rig.sent_in(Method::Bye, &call_id(&second.invite.headers))
            .is_empty()
            && rig
                .sent_in(Method::Bye, &call_id(&third.invite.headers))
                .is_empty()
    );
}

#[test]
fn caller_gone_while_the_agents_200_crosses_our_cancel_the_agent_is_acked_and_hung_up() {
    let mut rig = Rig::support();
    let mut c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(3.0);
    rig.hang_up_caller(&mut c);
    assert_eq!(rig.sent(Method::Cancel).len(), 1, "the offer is cancelled");
    // The agent picked up as our CANCEL flew.
    rig.agent_answers(&inv, 200, GW);
    let cid = call_id(&inv.headers);
    assert_eq!(rig.sent_in(Method::Ack, &cid).len(), 1, "the 2xx is ACKed");
    assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1, "and hung up");
    assert!(rig.log("CONNECT").is_empty(), "nobody to connect");
    assert_eq!(rig.log("ABANDON").len(), 1);
    assert!(rig.core.media().bridged.is_empty());
    assert!(
        rig.sent_in(Method::Bye, &call_id(&c.invite.headers))
            .is_empty(),
        "the caller hung up: no BYE back"
    );
    rig.secs(40.0);
    assert_eq!((rig.core.callers(), rig.core.agent_calls()), (0, 0));
    assert!(all_legs_closed(&rig));
    assert_eq!(rig.offers_to("2002"), 0, "no caller left to offer");
}

#[test]
fn both_sides_hanging_up_at_once_end_the_call_once() {
    let mut rig = Rig::support();
    let (mut c, inv) = rig.connected_call();
    rig.secs(5.0);
    rig.agent_hangs_up(&inv);
    assert_eq!(
        rig.sent_in(Method::Bye, &call_id(&c.invite.headers)).len(),
        1
    );
    // The caller's BYE crosses ours.
    let bye = rig.hang_up_caller(&mut c);
    assert_eq!(
        code(rig.final_to(&bye)),
        Some(481),
        "the dialog is gone: 481, not a second hang-up"
    );
    assert_eq!(rig.log("COMPLETEAGENT").len(), 1);
    assert!(rig.log("COMPLETECALLER").is_empty());
    assert!(
        rig.sent_in(Method::Bye, &call_id(&inv.headers)).is_empty(),
        "no BYE to the agent who hung up"
    );
    rig.secs(40.0);
    assert_eq!((rig.core.callers(), rig.core.agent_calls()), (0, 0));
    assert!(all_legs_closed(&rig));
}

#[test]
fn a_lone_member_that_never_answers_is_rung_again_after_each_retry() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let c = rig.caller("500", "1001");
    for round in 1..=3 {
        assert_eq!(rig.offers_to("2001"), round, "round {round}");
        let (_, inv) = rig.offer_to("2001").expect("offer");
        rig.agent_answers(&inv, 180, GW);
        rig.secs(14.8);
        assert_eq!(cancelled(&rig), round - 1, "still ringing");
        rig.secs(0.2);
        assert_eq!(cancelled(&rig), round, "ring timeout");
        rig.agent_answers(&inv, 487, GW);
        assert_eq!(rig.log("RINGNOANSWER").len(), round);
        rig.secs(4.8);
        assert_eq!(rig.offers_to("2001"), round, "the retry pause");
        rig.secs(0.2);
    }
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-1"]);
    assert!(rig
        .sent_in(Method::Bye, &call_id(&c.invite.headers))
        .is_empty());
    assert_eq!(rig.core.agent_calls(), 1, "only the newest offer");
}

#[test]
fn every_member_refusing_keeps_the_caller_waiting_until_the_next_round() {
    let mut rig = Rig::support();
    let c = rig.caller("500", "1001");
    let (_, a) = rig.offer_to("2001").expect("offer to 2001");
    rig.agent_answers(&a, 603, GW);
    let (_, b) = rig.offer_to("2002").expect("2002 at once");
    rig.agent_answers(&b, 486, GW);
    let rna = rig.log("RINGNOANSWER");
    assert_eq!(
        rna.iter().map(|e| e.agent.as_str()).collect::<Vec<_>>(),
        ["PJSIP/2001", "PJSIP/2002"]
    );
    assert_eq!(rig.core.agent_calls(), 0);
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-1"]);
    assert!(rig
        .sent_in(Method::Bye, &call_id(&c.invite.headers))
        .is_empty());
    let offers = |rig: &Rig| rig.offers_to("2001") + rig.offers_to("2002");
    rig.secs(4.9);
    assert_eq!(offers(&rig), 2, "the retry pause after a round of refusals");
    rig.secs(0.2);
    assert_eq!(offers(&rig), 3, "a new round");
}

#[test]
fn a_caller_stops_hearing_announcements_once_connected() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.announce_frequency = Some(30);
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::InUse);
    let _c = rig.caller("500", "1001");
    rig.secs(30.1);
    assert_eq!(rig.announcements().len(), 1, "one at 30 s");
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 200, GW);
    assert_eq!(rig.log("CONNECT").len(), 1);
    rig.secs(120.0);
    assert_eq!(rig.announcements().len(), 1, "none while connected");
}

#[test]
fn announcements_end_with_the_caller_and_the_others_move_up() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.announce_frequency = Some(20);
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::InUse);
    let mut a = rig.caller("500", "1001");
    rig.secs(10.0);
    let _b = rig.caller("500", "1002");
    rig.secs(10.1);
    let (leg_a, leg_b) = (rig.core.media().open[0], rig.core.media().open[1]);
    assert_eq!(rig.announcements().len(), 1);
    assert_eq!(rig.announcements()[0].0, leg_a);
    rig.hang_up_caller(&mut a); // at 20.1 s
    rig.secs(20.0); // to 40.1 s: B's at 30 s; A's 40 s one is gone
    let ann = rig.announcements();
    assert_eq!(ann.len(), 2, "{ann:?}");
    assert_eq!(
        ann[1],
        (
            leg_b,
            vec!["queue-youarenext".to_string(), "queue-thankyou".into()]
        ),
        "B is next now that A left"
    );
    rig.secs(20.0);
    assert_eq!(rig.announcements().len(), 3, "B again at 50 s");
    assert_eq!(rig.announcements()[2].0, leg_b);
}

#[test]
fn a_waiting_caller_leaves_a_queue_whose_members_become_unavailable_exitempty() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.leavewhenempty = EmptyConditions::parse("unavailable", false).expect("factors");
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::InUse);
    let c = rig.caller("500", "1001");
    rig.secs(10.0);
    assert!(rig.log("EXITEMPTY").is_empty(), "in use is not empty");
    rig.state("PJSIP/2001", DeviceState::Unavailable);
    rig.secs(5.0);
    let exit = rig.log("EXITEMPTY");
    assert_eq!(exit.len(), 1);
    assert_eq!(exit[0].callid, "acd-test-1");
    assert_eq!(
        rig.sent_in(Method::Bye, &call_id(&c.invite.headers)).len(),
        1,
        "the caller is hung up"
    );
    assert!(rig.log("ABANDON").is_empty());
    assert_eq!(rig.core.callers(), 0);
    assert!(all_legs_closed(&rig));
}

#[test]
fn hot_desking_names_members_with_the_configured_device_prefix() {
    let mut cfg = config(vec![queue("support", &["SIP/2001"])]);
    cfg.device_prefix = "SIP/".into();
    let mut rig = Rig::new(cfg);
    rig.state("SIP/2001", DeviceState::InUse);
    rig.caller("*45500", "2003");
    let add = rig.log("ADDMEMBER");
    assert_eq!(add.len(), 1);
    assert_eq!(add[0].agent, "SIP/2003", "not PJSIP/");
    assert!(rig
        .core
        .engine()
        .member_interfaces("support")
        .contains(&"SIP/2003".to_string()));
    rig.state("SIP/2003", DeviceState::NotInUse);
    rig.caller("500", "1001");
    let (to, inv) = rig.offer_to("2003").expect("offer to the new member");
    assert_eq!(
        (to, inv.uri.to_string()),
        (addr(GW), format!("sip:2003@{GW}"))
    );
    rig.agent_answers(&inv, 200, GW);
    assert_eq!(rig.log("CONNECT")[0].agent, "SIP/2003");
    rig.caller("*46500", "2003");
    assert_eq!(rig.log("REMOVEMEMBER")[0].agent, "SIP/2003");
}

#[test]
fn logging_in_twice_is_one_membership_and_after_logout_no_offers() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::InUse);
    rig.caller("*45500", "2003");
    rig.caller("*45500", "2003");
    assert_eq!(rig.log("ADDMEMBER").len(), 1, "already a member");
    let confirmations: Vec<Vec<String>> = rig.announcements().into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        confirmations,
        [
            vec!["agent-loginok".to_string(), "beep".into()],
            vec!["agent-loginok".to_string(), "beep".into()]
        ],
        "both confirmed"
    );
    let members = rig.core.engine().member_interfaces("support");
    assert_eq!(
        members.iter().filter(|m| *m == "PJSIP/2003").count(),
        1,
        "{members:?}"
    );
    rig.caller("*46500", "2003");
    assert_eq!(rig.log("REMOVEMEMBER").len(), 1);
    rig.state("PJSIP/2003", DeviceState::NotInUse);
    rig.caller("500", "1001");
    rig.secs(30.0);
    assert_eq!(rig.offers_to("2003"), 0, "logged out: never offered");
    let again = rig.dial("*46500", "2003");
    assert_eq!(
        code(rig.final_to(&again)),
        Some(403),
        "logging out twice: not a member"
    );
}
