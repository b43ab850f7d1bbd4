//! CDR assembly: a B2BUA call record and the relay's figures for its two legs become one row
//! of the `cdr` table (Asterisk's columns: disposition, billsec, linkedid …), stored off the
//! call path; and the agent of an ACD call, joined to its caller's record by linked id.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use tracing::warn;

use super::Core;
use crate::b2bua::CallRecord;
use crate::media::LegStats;
use crate::records::Cdr;

/// Asterisk's disposition of a call that ended for `reason` (answered or not).
pub(super) fn disposition(answered: bool, reason: &str) -> &'static str {
    match (answered, reason) {
        (true, _) => "ANSWERED",
        (false, "486" | "600") => "BUSY",
        (false, "cancel" | "no-answer" | "408" | "480" | "487" | "603") => "NO ANSWER",
        (false, _) => "FAILED",
    }
}

/// The CDR of call `call` (its number, or `r<n>` for a refused INVITE) of node `node`
/// (process `pid`), ended at `end` for `reason`; `agent`: the device that answered the caller
/// through an ACD, for the caller's record.
pub(super) fn assemble(
    (node, pid): (&str, u32),
    call: &str,
    reason: &str,
    r: &CallRecord,
    legs: Option<&(LegStats, LegStats)>,
    agent: Option<String>,
    end: SystemTime,
) -> Cdr {
    let end = end
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (a, b) = match legs {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let uniqueid = if r.uniqueid.is_empty() {
        format!("{node}-{pid}-{call}")
    } else {
        r.uniqueid.clone()
    };
    Cdr {
        linkedid: if r.linkedid.is_empty() {
            uniqueid.clone()
        } else {
            r.linkedid.clone()
        },
        agent,
        uniqueid,
        node: node.to_owned(),
        start_time: secs(end.saturating_sub(r.duration)),
        answer_time: r.billsec.map(|b| secs(end.saturating_sub(b))),
        end_time: secs(end),
        src: r.caller.clone(),
        dst: r.dialled.clone(),
        src_device: r.caller_device.clone(),
        dst_device: r.callee_device.clone(),
        presented: r.presented.clone(),
        disposition: disposition(r.billsec.is_some(), reason).into(),
        reason: reason.into(),
        duration: secs(r.duration),
        billsec: r.billsec.map_or(0, secs),
        rtp_in_a: a.map_or(0, |s| n(s.rtp_packets_in)),
        rtp_in_b: b.map_or(0, |s| n(s.rtp_packets_in)),
        lost_a: a.map_or(0, |s| s.lost),
        lost_b: b.map_or(0, |s| s.lost),
        jitter_a_us: a.map_or(0, |s| (s.jitter_ms * 1000.0) as i64),
        jitter_b_us: b.map_or(0, |s| (s.jitter_ms * 1000.0) as i64),
    }
}

/// Linked id → agent device, for the caller's CDR when the agent's call ends first; bounded
/// (the caller's call may be at another gateway and never claim its entry).
#[derive(Default)]
pub(super) struct LinkedAgents {
    map: HashMap<String, String>,
    order: VecDeque<String>,
}

impl LinkedAgents {
    const MAX: usize = 4096;

    pub(super) fn insert(&mut self, linkedid: String, device: String) {
        if self.map.insert(linkedid.clone(), device).is_none() {
            self.order.push_back(linkedid);
        }
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub(super) fn remove(&mut self, linkedid: &str) -> Option<String> {
        let d = self.map.remove(linkedid)?;
        self.order.retain(|l| l != linkedid);
        Some(d)
    }
}

impl Core {
    /// The CDR of call `call` ended now for `reason` (see [`assemble`]).
    pub(super) fn cdr(
        &self,
        call: &str,
        reason: &str,
        r: &CallRecord,
        legs: Option<&(LegStats, LegStats)>,
        agent: Option<String>,
    ) -> Cdr {
        let who = (self.cfg.node.as_str(), std::process::id());
        assemble(who, call, reason, r, legs, agent, SystemTime::now())
    }

    /// Stores a CDR off the call path (a failed write is logged).
    pub(super) fn write_cdr(&mut self, cdr: Cdr) {
        let store = self.records.clone();
        self.shutdown.writes.push(tokio::spawn(async move {
            if let Err(e) = store.insert_cdr(&cdr).await {
                warn!(error = %e, "CDR not written");
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(duration: u64, billsec: Option<u64>) -> CallRecord {
        CallRecord {
            caller: "1001".into(),
            dialled: "2001".into(),
            caller_device: Some("PJSIP/1001".into()),
            duration: Duration::from_secs(duration),
            billsec: billsec.map(Duration::from_secs),
            ..CallRecord::default()
        }
    }

    const END: u64 = 1_765_000_000;

    fn at_end() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(END)
    }

    #[test]
    fn an_answered_call_has_its_start_answer_and_end_times() {
        let mut r = record(30, Some(20));
        r.uniqueid = "gw-1-7".into();
        let c = assemble(("gw", 1), "7", "bye-a", &r, None, None, at_end());
        assert_eq!(c.disposition, "ANSWERED");
        assert_eq!(
            (c.start_time, c.answer_time, c.end_time),
            (1_764_999_970, Some(1_764_999_980), 1_765_000_000)
        );
        assert_eq!((c.duration, c.billsec), (30, 20));
        // Its own call is the first of its chain.
        assert_eq!(
            (c.uniqueid.as_str(), c.linkedid.as_str()),
            ("gw-1-7", "gw-1-7")
        );
        assert_eq!((c.src.as_str(), c.dst.as_str()), ("1001", "2001"));
        assert_eq!(c.src_device.as_deref(), Some("PJSIP/1001"));
        assert_eq!((c.rtp_in_a, c.lost_b, c.jitter_a_us), (0, 0, 0));
    }

    #[test]
    fn a_refused_call_is_numbered_by_the_node_and_keeps_its_linked_id() {
        let mut r = record(0, None);
        r.linkedid = "gw-a-9-3".into();
        let c = assemble(
            ("gw-b", 42),
            "r5",
            "486",
            &r,
            None,
            Some("PJSIP/2001".into()),
            at_end(),
        );
        assert_eq!(c.uniqueid, "gw-b-42-r5");
        assert_eq!(c.linkedid, "gw-a-9-3");
        assert_eq!(c.node, "gw-b");
        assert_eq!(c.agent.as_deref(), Some("PJSIP/2001"));
        assert_eq!(c.disposition, "BUSY");
        assert_eq!((c.answer_time, c.billsec), (None, 0));
    }

    #[test]
    fn dispositions_follow_asterisk() {
        for (reason, want) in [
            ("486", "BUSY"),
            ("600", "BUSY"),
            ("cancel", "NO ANSWER"),
            ("no-answer", "NO ANSWER"),
            ("487", "NO ANSWER"),
            ("603", "NO ANSWER"),
            ("503", "FAILED"),
            ("media-timeout", "FAILED"),
        ] {
            assert_eq!(disposition(false, reason), want, "{reason}");
        }
        assert_eq!(disposition(true, "486"), "ANSWERED");
    }

    #[test]
    fn linked_agents_are_claimed_once_and_bounded() {
        let mut l = LinkedAgents::default();
        l.insert("L1".into(), "PJSIP/2001".into());
        assert_eq!(l.remove("L1").as_deref(), Some("PJSIP/2001"));
        assert_eq!(l.remove("L1"), None);
        for i in 0..LinkedAgents::MAX + 10 {
            l.insert(format!("L{i}"), "d".into());
        }
        assert_eq!(l.map.len(), LinkedAgents::MAX);
        // The oldest went first.
        assert_eq!(l.remove("L0"), None);
        assert!(l.remove(&format!("L{}", LinkedAgents::MAX + 9)).is_some());
    }
}
