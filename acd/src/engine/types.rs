//! Public inputs, outputs, statistics and errors of the engine.

use std::time::Duration;

/// Engine time: a duration since an epoch chosen by the driver, monotonic (the ACD's call
/// control passes the time since it started, so a wall-clock step never moves a ring timeout,
/// and stamps queue_log lines with the wall clock itself). Tests use virtual time from zero.
pub type Time = Duration;

/// Errors returned by engine inputs. None of them changes engine state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Invalid configuration value.
    #[error("bad config: {0}")]
    BadConfig(String),
    /// Invalid penalty rule.
    #[error("bad penalty rule: {0}")]
    BadRule(String),
    /// No such queue.
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    /// A queue with this name exists already.
    #[error("duplicate queue {0:?}")]
    DuplicateQueue(String),
    /// No such caller (waiting or connected).
    #[error("unknown caller {0:?}")]
    UnknownCaller(String),
    /// The caller id is already waiting or connected.
    #[error("caller {0:?} is already known")]
    DuplicateCaller(String),
    /// The interface is not a member of the queue (or of any queue).
    #[error("{interface:?} is not a member of {queue:?}")]
    NotMember {
        /// Queue name (`*` for all queues).
        queue: String,
        /// Member interface.
        interface: String,
    },
    /// The interface is already a member of the queue.
    #[error("{interface:?} is already a member of {queue:?}")]
    AlreadyMember {
        /// Queue name.
        queue: String,
        /// Member interface.
        interface: String,
    },
    /// Static (configured) members cannot be removed at run time.
    #[error("{interface:?} is a static member of {queue:?}")]
    NotDynamic {
        /// Queue name.
        queue: String,
        /// Member interface.
        interface: String,
    },
    /// `maxlen` reached (QUEUESTATUS=FULL).
    #[error("queue {0:?} is full")]
    QueueFull(String),
    /// `joinempty` refused the caller (QUEUESTATUS=JOINEMPTY).
    #[error("queue {0:?} has no usable members (joinempty)")]
    JoinEmpty(String),
    /// No such outstanding offer (already answered, cancelled or timed out).
    #[error("no outstanding offer {0}")]
    NoSuchOffer(OfferId),
}

/// Identifies one [`Action::Offer`]; never reused, so a late outcome for an offer the engine
/// already cancelled is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OfferId(pub u64);

impl std::fmt::Display for OfferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A caller entering a queue (the Queue() application).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// Caller id (channel uniqueid); unique while the caller is waiting or connected.
    pub caller: String,
    /// Queue name.
    pub queue: String,
    /// Caller number, for ENTERQUEUE.
    pub caller_number: String,
    /// Penalty rule name; defaults to the queue's `defaultrule`.
    pub rule: Option<String>,
    /// QUEUE_MAX_PENALTY, QUEUE_MIN_PENALTY, QUEUE_RAISE_PENALTY.
    pub penalties: Penalties,
    /// Queue() timeout argument: maximum wait before EXITWITHTIMEOUT.
    pub max_wait: Option<Duration>,
    /// Where the caller stands among the queue's callers: priority, then join time.
    pub place: Place,
}

impl Join {
    /// A join with defaults (priority 0, no penalties, no rule, no max wait).
    pub fn new(caller: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            caller: caller.into(),
            queue: queue.into(),
            caller_number: String::new(),
            rule: None,
            penalties: Penalties::default(),
            max_wait: None,
            place: Place::default(),
        }
    }
}

/// Where a joining caller stands among the callers of its queue (app_queue's order): higher
/// priority first, then earlier join. Default: priority 0, joined now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    /// QUEUE_PRIO: higher is served first.
    pub priority: i32,
    /// When the caller originally joined (engine time, not after now): a caller moved from
    /// another node keeps their place among callers of the same priority. `None`: now.
    pub joined_at: Option<Time>,
    /// Original join time, unix ms: the caller's place in a global order across ACD nodes
    /// (now, or kept from the node it moved from). `None`: engine time.
    pub joined_ms: Option<u64>,
}

/// A caller's penalty window (app_queue's QUEUE_MAX_PENALTY, QUEUE_MIN_PENALTY and
/// QUEUE_RAISE_PENALTY): the members it may be offered, moved by penalty rules as it waits.
/// All `None`: every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Penalties {
    /// Members of a higher penalty are not offered.
    pub max: Option<i32>,
    /// Members of a lower penalty are not offered.
    pub min: Option<i32>,
    /// A member penalty below it counts as it (before `max` and `min` are checked).
    pub raise: Option<i32>,
}

impl Penalties {
    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        *self == Penalties::default()
    }

    /// A member's penalty seen through the window (`calc_metric` / `get_member_status`): the
    /// effective penalty, or `None` when the member is out of range.
    pub fn admit(&self, penalty: i32) -> Option<i32> {
        let p = self.raise.map_or(penalty, |r| penalty.max(r));
        if self.max.is_some_and(|m| p > m) || self.min.is_some_and(|m| p < m) {
            return None;
        }
        Some(p)
    }

    /// The window after a penalty rule's change.
    pub fn apply(&mut self, rule: &super::rules::PenaltyRule) {
        self.max = rule.max.apply(self.max);
        self.min = rule.min.apply(self.min);
        self.raise = rule.raise.apply(self.raise);
    }
}

/// Result of one offer, reported by the gateway side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    /// The agent answered: the caller is connected to it.
    Answered,
    /// The agent did not answer: RINGNOANSWER, and the caller waits `retry` before the next
    /// attempt (once no other offer for it is outstanding).
    NoAnswer,
    /// The phone refused (busy, declined) or the call failed after it was placed: RINGNOANSWER
    /// and the next member is tried at once (in the same ring window), as app_queue does on
    /// BUSY/CONGESTION and on an outgoing channel that hangs up (`rna()` in all three).
    Busy,
    /// The call to the phone failed after it was placed for want of the phone (5xx, 404, 408,
    /// 410, 480, 484: Asterisk's CONGESTION): routed as [`OfferOutcome::Busy`], and counted for
    /// autopause only with `autopauseunavail` (app_queue's `rna()` on CONGESTION).
    Unavailable,
    /// The member could not be rung at all: its gateway refused the offer before ringing the
    /// phone (no reachable contact, already in a call with ringinuse off, deadline passed) or
    /// the call could not be placed. app_queue logs nothing when `ast_request`/`ast_call` fail
    /// (`ring_entry`), so neither does the engine; the next member is tried at once.
    Refused,
    /// Refused by the gateway's arbiter because the member is already in a call (`ringinuse`
    /// off; a 486 with `X-CF-Refused`): another node's caller got it first, and its device state
    /// here is stale. As [`OfferOutcome::Refused`], and the member reads INUSE until its next
    /// device state, so the caller waits for that instead of `retry` (issue 15: a refused
    /// offer cost a full `retry` once the agent was free again).
    Taken,
}

/// Who ended a connected call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletedBy {
    /// COMPLETECALLER
    Caller,
    /// COMPLETEAGENT
    Agent,
}

/// Why the engine removed a caller from a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// `leavewhenempty` (EXITEMPTY).
    Empty,
    /// Max wait reached (EXITWITHTIMEOUT).
    Timeout,
}

/// One queue_log line: `epoch|callid|queuename|agent|event|data1|data2|…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLogEvent {
    /// Engine time of the event (the ACD's call control replaces it with the wall clock,
    /// unix time, before writing the line).
    pub time: Time,
    /// Caller id, or `NONE` / `MANAGER`.
    pub callid: String,
    /// Queue name.
    pub queue: String,
    /// Member name, or `NONE`.
    pub agent: String,
    /// Event name (ENTERQUEUE, CONNECT, …).
    pub event: &'static str,
    /// Data fields.
    pub data: Vec<String>,
}

impl QueueLogEvent {
    /// The line as app_queue writes it (epoch = whole seconds of [`QueueLogEvent::time`]).
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}|{}|{}|{}|{}",
            self.time.as_secs(),
            self.callid,
            self.queue,
            self.agent,
            self.event
        );
        for d in &self.data {
            s.push('|');
            s.push_str(d);
        }
        s
    }
}

/// What the driver must do, polled with [`crate::Engine::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ring `interface` for `caller` (ringall: one per member). Report the result with
    /// [`crate::Engine::offer_outcome`]. The engine cancels it itself after `ring_timeout`.
    Offer {
        /// Offer id, to pass back to [`crate::Engine::offer_outcome`].
        id: OfferId,
        /// Caller id.
        caller: String,
        /// Queue name.
        queue: String,
        /// Member interface to ring.
        interface: String,
        /// Ring time allowed (`None`: no limit).
        ring_timeout: Option<Duration>,
    },
    /// Stop ringing `interface` for `caller`.
    CancelOffer {
        /// The offer cancelled.
        id: OfferId,
        /// Caller id.
        caller: String,
        /// Queue name.
        queue: String,
        /// Member interface.
        interface: String,
    },
    /// Bridge `caller` with the member that answered; the caller has left the queue. Report the
    /// end of the call with [`crate::Engine::call_completed`].
    Connect {
        /// Caller id.
        caller: String,
        /// Queue name.
        queue: String,
        /// Member interface.
        interface: String,
        /// Time the caller waited.
        holdtime: Duration,
    },
    /// The engine removed a waiting caller (continue the dialplan with QUEUESTATUS).
    CallerRemoved {
        /// Caller id.
        caller: String,
        /// Queue name.
        queue: String,
        /// Reason.
        reason: ExitReason,
    },
    /// A queue_log line.
    QueueLog(QueueLogEvent),
}

/// Per-queue statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Callers that joined.
    pub joined: u64,
    /// Callers connected to an agent.
    pub answered: u64,
    /// Callers that hung up while waiting (ABANDON).
    pub abandoned: u64,
    /// EXITWITHTIMEOUT.
    pub timed_out: u64,
    /// EXITEMPTY.
    pub exited_empty: u64,
    /// Connected calls that ended (COMPLETECALLER/COMPLETEAGENT).
    pub completed: u64,
    /// Answered within `servicelevel` seconds of joining.
    pub answered_within_sl: u64,
    /// Sum of hold times of answered callers.
    pub total_holdtime: Duration,
    /// Sum of talk times of completed calls.
    pub total_talktime: Duration,
    /// app_queue's weighted average hold time in seconds (`(3·old + new) / 4`).
    pub holdtime_weighted_secs: u64,
    /// Time the last call ended.
    pub last_call: Option<Time>,
}

impl QueueStats {
    /// Mean wait of answered callers.
    pub fn average_wait(&self) -> Option<Duration> {
        u32::try_from(self.answered)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| self.total_holdtime / n)
    }

    /// Share of answered callers answered within the service level (0..=1).
    pub fn service_level(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.answered_within_sl as f64 / self.answered as f64)
    }
}

/// Per-member (per queue) statistics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Member name.
    pub name: String,
    /// Penalty.
    pub penalty: i32,
    /// Paused.
    pub paused: bool,
    /// Pause reason while paused (empty when not paused).
    pub pause_reason: String,
    /// Paused since (engine time).
    pub paused_since: Option<Time>,
    /// Added at run time (not from config).
    pub dynamic: bool,
    /// Calls answered from this queue.
    pub answered: u64,
    /// Completed calls (app_queue's `calls`; with shared_lastcall counted in every queue).
    pub calls: u64,
    /// End of the last call (wrap-up starts here).
    pub last_call: Option<Time>,
    /// Sum of talk time of calls from this queue.
    pub talk_time: Duration,
}
