//! The ACD queue engine: app_queue semantics as sans-IO, deterministic logic.
//!
//! Every input carries `now` ([`Time`]); outputs are polled with [`Engine::poll_action`] and the
//! next deadline with [`Engine::poll_timeout`], which the driver feeds back through
//! [`Engine::handle_timeout`]. Randomness comes from a seeded [`Rng`].
//!
//! Index: device key → agents → queues (each agent keeps its queue list sorted by weight), so a
//! device-state change touches only that member's queues, and every decision is
//! O(members of one queue).

mod admin;
mod availability;
mod config;
mod global;
mod persist;
mod rules;
mod strategy;
mod types;

pub use admin::{AgentView, ReloadReport, WaitingCaller, AUTO_PAUSE_REASON};
pub use availability::{counts_as_present, state_available};
pub use config::{AutoPause, EmptyConditions, EngineConfig, MemberConfig, QueueConfig, Strategy};
pub use global::WaitingChange;
pub use persist::RuntimeMember;
pub use rules::{PenaltyRule, RuleValue};
pub use strategy::Rng;
pub use types::{
    Action, CompletedBy, EngineError, ExitReason, Join, MemberStats, OfferId, OfferOutcome,
    Penalties, Place, QueueLogEvent, QueueStats, Time,
};

use admin::Missed;
use statebus::DeviceState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;
use strategy::{metric, MetricIn};

type AgentId = usize;
type QueueId = usize;
type CallerKey = u64;

/// Minimum ring time left for trying the next member after a busy (app_queue: 500 ms).
const MIN_RING_LEFT: Duration = Duration::from_millis(500);

/// Normalise a device / interface key: case-insensitive, Local channels up to the second `/`.
pub fn normalize_key(key: &str) -> String {
    let l = key.trim().to_ascii_lowercase();
    if let Some(rest) = l.strip_prefix("local/") {
        if let Some(i) = rest.find('/') {
            return l[..6 + i].to_string();
        }
    }
    l
}

#[derive(Debug)]
struct Device {
    state: DeviceState,
    /// When `state` last changed (engine time).
    since: Time,
    agents: Vec<AgentId>,
}

#[derive(Debug)]
struct Agent {
    interface: String,
    device: usize,
    /// Queues this agent is a member of, highest weight first.
    queues: Vec<QueueId>,
    offering: Option<CallerKey>,
    in_calls: u32,
    /// The driver cannot reach the agent's gateway (SIP keep-alives): UNAVAILABLE whatever
    /// the device state says.
    unreachable: bool,
}

#[derive(Debug)]
struct Member {
    agent: AgentId,
    name: String,
    penalty: i32,
    paused: bool,
    reason: String,
    /// When the member was paused (engine time).
    paused_since: Option<Time>,
    /// How long the pause had lasted before a restart (restored with it): counted in the
    /// pause's duration; zero for a pause begun in this engine.
    paused_before: Time,
    /// Offers missed in a row (autopause).
    missed: u32,
    ringinuse: Option<bool>,
    wrapuptime: Option<u64>,
    dynamic: bool,
    calls: u64,
    answered: u64,
    last_call: Option<Time>,
    talk_time: Duration,
}

impl Member {
    /// How long the member has been paused at `now` (zero when not paused), a pause restored
    /// after a restart counting from when it began.
    fn paused_for(&self, now: Time) -> Time {
        self.paused_since
            .filter(|_| self.paused)
            .map_or(Duration::ZERO, |since| {
                now.saturating_sub(since) + self.paused_before
            })
    }
}

#[derive(Debug)]
struct Queue {
    cfg: QueueConfig,
    members: Vec<Member>,
    index: HashMap<AgentId, usize>,
    callers: Vec<CallerKey>,
    rrpos: usize,
    stats: QueueStats,
}

#[derive(Debug)]
enum Phase {
    Waiting,
    Ringing {
        offered: Vec<(AgentId, Time, OfferId)>,
        tried: Vec<AgentId>,
        until: Option<Time>,
    },
    Retry,
}

#[derive(Debug)]
struct Caller {
    id: String,
    queue: QueueId,
    priority: i32,
    joined: Time,
    /// Original join time (unix ms; engine ms when the driver gave none): the global order.
    joined_ms: u64,
    opos: usize,
    penalties: Penalties,
    rules: Vec<PenaltyRule>,
    next_rule: usize,
    phase: Phase,
    linpos: usize,
    gen: u64,
}

#[derive(Debug)]
struct Active {
    queue: QueueId,
    agent: AgentId,
    holdtime: Duration,
    connected: Time,
    opos: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Ring {
        caller: CallerKey,
        gen: u64,
    },
    Retry {
        caller: CallerKey,
        gen: u64,
    },
    Expire {
        caller: CallerKey,
    },
    Rule {
        caller: CallerKey,
        idx: usize,
    },
    Wrap {
        queue: QueueId,
    },
    Settle {
        queue: QueueId,
    },
    /// The synthetic INUSE of an agent the arbiter refused (`OfferOutcome::Taken`) ends, unless
    /// the fabric changed the device's state since.
    Untaken {
        device: usize,
        since: Time,
    },
}

/// How long an agent the arbiter refused reads INUSE without word from the fabric.
const UNTAKEN_AFTER: Duration = Duration::from_secs(5);

/// The queue engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    now: Time,
    shared_lastcall: bool,
    rules: HashMap<String, Vec<PenaltyRule>>,
    rng: Rng,
    devices: Vec<Device>,
    device_by_key: HashMap<String, usize>,
    agents: Vec<Agent>,
    agent_by_key: HashMap<String, AgentId>,
    queues: Vec<Queue>,
    queue_by_name: HashMap<String, QueueId>,
    callers: HashMap<CallerKey, Caller>,
    caller_by_id: HashMap<String, CallerKey>,
    active: HashMap<String, Active>,
    next_caller: CallerKey,
    timers: BinaryHeap<Reverse<(Time, u64, Timer)>>,
    timer_seq: u64,
    actions: VecDeque<Action>,
    weights_differ: bool,
    next_offer: u64,
    offers: HashMap<OfferId, (CallerKey, AgentId)>,
    /// Offer → the uniqueid of the agent's call, for CONNECT ([`Engine::set_bridged_channel`]).
    bridged: HashMap<OfferId, String>,
    /// This node in a global order (`global.rs`); `None`: a queue of this node only.
    fabric_eid: Option<statebus::Eid>,
    /// Callers waiting at other nodes, per queue, in global order.
    remote: HashMap<QueueId, Vec<statebus::waiting::OrderKey>>,
    /// Changes of our waiting callers for the fabric.
    waiting_out: VecDeque<WaitingChange>,
    /// How long a new caller waits before it may be offered, in a global order (`global.rs`).
    settle: Duration,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Engine {
    /// Build an engine from configuration (queues with their static members, penalty rules).
    /// Time starts at zero; the first input's `now` moves it forward.
    pub fn new(cfg: &EngineConfig) -> Result<Self, EngineError> {
        let mut e = Engine {
            now: Duration::ZERO,
            shared_lastcall: cfg.shared_lastcall,
            rules: cfg.parsed_rules()?,
            rng: Rng::new(cfg.seed),
            devices: Vec::new(),
            device_by_key: HashMap::new(),
            agents: Vec::new(),
            agent_by_key: HashMap::new(),
            queues: Vec::new(),
            queue_by_name: HashMap::new(),
            callers: HashMap::new(),
            caller_by_id: HashMap::new(),
            active: HashMap::new(),
            next_caller: 1,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            actions: VecDeque::new(),
            weights_differ: false,
            next_offer: 1,
            offers: HashMap::new(),
            bridged: HashMap::new(),
            fabric_eid: None,
            remote: HashMap::new(),
            waiting_out: VecDeque::new(),
            settle: Duration::ZERO,
        };
        for q in &cfg.queues {
            e.add_queue(Duration::ZERO, q.clone())?;
        }
        Ok(e)
    }

    // ------------------------------------------------------------------ outputs

    /// Next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Earliest time at which [`Engine::handle_timeout`] has work to do.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        while let Some(Reverse((t, _, timer))) = self.timers.peek().copied() {
            if self.timer_valid(timer) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Process every timer due at `now` (ring timeouts, retries, max waits, penalty rules,
    /// wrap-up ends). Also usable as a periodic tick.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
    }

    // ------------------------------------------------------------------ queries

    /// Current engine time (the latest `now` seen).
    pub fn now(&self) -> Time {
        self.now
    }

    /// Statistics of a queue.
    pub fn queue_stats(&self, queue: &str) -> Option<&QueueStats> {
        self.qid(queue).ok().map(|q| &self.queues[q].stats)
    }

    /// The member interfaces of a queue, in member order (config order, then dynamic ones).
    pub fn member_interfaces(&self, queue: &str) -> Vec<String> {
        let Ok(q) = self.qid(queue) else {
            return Vec::new();
        };
        self.queues[q]
            .members
            .iter()
            .map(|m| self.agents[m.agent].interface.clone())
            .collect()
    }

    /// Statistics and status of one member of a queue.
    pub fn member_stats(&self, queue: &str, interface: &str) -> Option<MemberStats> {
        let q = self.qid(queue).ok()?;
        let a = *self.agent_by_key.get(&normalize_key(interface))?;
        let m = &self.queues[q].members[*self.queues[q].index.get(&a)?];
        Some(MemberStats {
            name: m.name.clone(),
            penalty: m.penalty,
            paused: m.paused,
            pause_reason: m.reason.clone(),
            paused_since: m.paused_since,
            dynamic: m.dynamic,
            answered: m.answered,
            calls: m.calls,
            last_call: m.last_call,
            talk_time: m.talk_time,
        })
    }

    /// Caller ids waiting in a queue, in position order.
    pub fn waiting_callers(&self, queue: &str) -> Vec<String> {
        let Ok(q) = self.qid(queue) else {
            return Vec::new();
        };
        self.queues[q]
            .callers
            .iter()
            .filter_map(|k| self.callers.get(k).map(|c| c.id.clone()))
            .collect()
    }

    /// The caller currently offered to `interface`, if any.
    pub fn offered_caller(&self, interface: &str) -> Option<&str> {
        let a = self.agent_by_key.get(&normalize_key(interface))?;
        let k = self.agents[*a].offering?;
        self.callers.get(&k).map(|c| c.id.as_str())
    }

    /// The outstanding offer to `interface`, if any.
    pub fn offer_of(&self, interface: &str) -> Option<OfferId> {
        let a = *self.agent_by_key.get(&normalize_key(interface))?;
        let k = self.agents[a].offering?;
        match &self.callers.get(&k)?.phase {
            Phase::Ringing { offered, .. } => offered
                .iter()
                .find(|(x, _, _)| *x == a)
                .map(|(_, _, id)| *id),
            _ => None,
        }
    }

    /// `is_member_available` for a member of a queue (plus: not currently offered a call).
    pub fn is_member_available(&self, queue: &str, interface: &str) -> Option<bool> {
        let q = self.qid(queue).ok()?;
        let a = self.agent_by_key.get(&normalize_key(interface))?;
        let mi = *self.queues[q].index.get(a)?;
        Some(self.member_available(q, mi))
    }

    /// Members' device keys (normalised) whose state was never reported: still UNKNOWN.
    pub fn unheard_devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .device_by_key
            .iter()
            .filter(|(_, d)| {
                self.devices[**d].state == DeviceState::Unknown
                    && !self.devices[**d].agents.is_empty()
            })
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Names of all queues.
    pub fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(|q| q.cfg.name.as_str())
    }

    // ------------------------------------------------------------------ configuration inputs

    /// Add a queue with its static members.
    pub fn add_queue(&mut self, now: Time, cfg: QueueConfig) -> Result<(), EngineError> {
        self.advance(now);
        let key = cfg.name.to_ascii_lowercase();
        if self.queue_by_name.contains_key(&key) {
            return Err(EngineError::DuplicateQueue(cfg.name));
        }
        let members = cfg.members.clone();
        let q = self.queues.len();
        if self.queues.iter().any(|o| o.cfg.weight != cfg.weight) {
            self.weights_differ = true;
        }
        self.queues.push(Queue {
            cfg,
            members: Vec::new(),
            index: HashMap::new(),
            callers: Vec::new(),
            rrpos: 0,
            stats: QueueStats::default(),
        });
        self.queue_by_name.insert(key, q);
        for m in members {
            // Duplicates in config: the first one wins, as app_queue.
            let _ = self.insert_member(q, m, false, false);
        }
        Ok(())
    }

    /// Add a dynamic member (AddQueueMember / login). Logs ADDMEMBER.
    pub fn add_member(
        &mut self,
        now: Time,
        queue: &str,
        member: MemberConfig,
    ) -> Result<(), EngineError> {
        self.advance(now);
        let q = self.qid(queue)?;
        self.insert_member(q, member, true, true)?;
        self.dispatch(q);
        Ok(())
    }

    /// Remove a dynamic member (RemoveQueueMember / logout). Logs REMOVEMEMBER. An offer in
    /// progress to it for this queue is cancelled and the caller tries the next member.
    pub fn remove_member(
        &mut self,
        now: Time,
        queue: &str,
        interface: &str,
    ) -> Result<(), EngineError> {
        self.advance(now);
        let q = self.qid(queue)?;
        let (a, mi) = self.membership(q, interface)?;
        if !self.queues[q].members[mi].dynamic {
            return Err(EngineError::NotDynamic {
                queue: self.queues[q].cfg.name.clone(),
                interface: interface.to_string(),
            });
        }
        if let Some(ck) = self.agents[a].offering {
            if self.callers.get(&ck).is_some_and(|c| c.queue == q) {
                self.end_offer(ck, a, true, false);
                self.continue_after_busy(ck);
            }
        }
        let qu = &mut self.queues[q];
        qu.members.remove(mi);
        qu.index.remove(&a);
        for (i, m) in qu.members.iter().enumerate().skip(mi) {
            qu.index.insert(m.agent, i);
        }
        if mi < qu.rrpos {
            qu.rrpos -= 1;
        }
        let qname = qu.cfg.name.clone();
        self.agents[a].queues.retain(|x| *x != q);
        let iface = self.agents[a].interface.clone();
        self.log(
            "MANAGER",
            &qname,
            &iface,
            "REMOVEMEMBER",
            vec![String::new()],
        );
        self.dispatch(q);
        self.dispatch_agent(a);
        Ok(())
    }

    /// Pause a member in one queue or (queue `None`) in all its queues. Logs PAUSE with the
    /// reason.
    pub fn pause(
        &mut self,
        now: Time,
        interface: &str,
        queue: Option<&str>,
        reason: &str,
    ) -> Result<(), EngineError> {
        self.set_paused(now, interface, queue, reason, true)
    }

    /// Unpause a member in one queue or in all its queues. Logs UNPAUSE.
    pub fn unpause(
        &mut self,
        now: Time,
        interface: &str,
        queue: Option<&str>,
        reason: &str,
    ) -> Result<(), EngineError> {
        self.set_paused(now, interface, queue, reason, false)
    }

    /// Change a member's penalty in one queue or in all its queues. Logs PENALTY.
    pub fn set_penalty(
        &mut self,
        now: Time,
        interface: &str,
        queue: Option<&str>,
        penalty: i32,
    ) -> Result<(), EngineError> {
        self.advance(now);
        let targets = self.targets(interface, queue)?;
        for (q, mi) in &targets {
            let m = &mut self.queues[*q].members[*mi];
            m.penalty = penalty;
            let name = m.name.clone();
            let qname = self.queues[*q].cfg.name.clone();
            self.log("NONE", &qname, &name, "PENALTY", vec![penalty.to_string()]);
        }
        for (q, _) in targets {
            self.dispatch(q);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ runtime inputs

    /// Aggregate device state of `key` changed (e.g. `PJSIP/1000`, matched case-insensitively
    /// against members' state interfaces). Only the queues of the affected members are touched.
    pub fn device_state(&mut self, now: Time, key: &str, state: DeviceState) {
        self.advance(now);
        let k = normalize_key(key);
        let d = self.device_for(&k);
        self.set_device(d, state);
    }

    /// A device's state changed (from the fabric, or a synthetic INUSE ending): dispatch the
    /// queues where its members became usable.
    fn set_device(&mut self, d: usize, state: DeviceState) {
        if self.devices[d].state == state {
            return;
        }
        self.devices[d].state = state;
        self.devices[d].since = self.now;
        let never = matches!(state, DeviceState::Invalid | DeviceState::Unavailable);
        let agents = self.devices[d].agents.clone();
        for a in agents {
            let qs = self.agents[a].queues.clone();
            for q in qs {
                // A change that leaves the member unavailable in `q` (or an agent that just got
                // an offer from an earlier queue) cannot produce an offer there: only the
                // leavewhenempty check is left.
                let usable = !never
                    && self.queues[q]
                        .index
                        .get(&a)
                        .is_some_and(|mi| self.member_available(q, *mi));
                if !usable {
                    self.check_leave_empty(q);
                } else {
                    self.dispatch(q);
                }
            }
        }
    }

    /// Whether the driver can reach the member `interface` (e.g. the SIP keep-alives to the
    /// gateway holding its registration answer). An unreachable member counts as UNAVAILABLE
    /// whatever its device state, independently of the state fabric; an offer in progress to it
    /// is cancelled ([`Action::CancelOffer`], RINGCANCELED) and its caller tries the next member.
    /// Reachable again: the member is offered callers as its device state allows. Unknown
    /// interfaces are ignored.
    pub fn set_reachable(&mut self, now: Time, interface: &str, reachable: bool) {
        self.advance(now);
        let Some(a) = self.agent_by_key.get(&normalize_key(interface)).copied() else {
            return;
        };
        if self.agents[a].unreachable != reachable {
            return;
        }
        self.agents[a].unreachable = !reachable;
        if reachable {
            self.dispatch_agent(a);
            return;
        }
        if let Some(ck) = self.agents[a].offering {
            self.end_offer(ck, a, true, false);
            self.continue_after_busy(ck);
        }
        let qs = self.agents[a].queues.clone();
        for q in qs {
            self.check_leave_empty(q);
        }
    }

    /// Whether `interface` is reachable as far as the engine knows ([`Engine::set_reachable`]).
    pub fn is_reachable(&self, interface: &str) -> bool {
        self.agent_by_key
            .get(&normalize_key(interface))
            .is_none_or(|a| !self.agents[*a].unreachable)
    }

    /// A caller enters a queue. Returns its position (1-based). Logs ENTERQUEUE.
    pub fn join(&mut self, now: Time, j: Join) -> Result<usize, EngineError> {
        self.advance(now);
        let q = self.qid(&j.queue)?;
        if self.caller_by_id.contains_key(&j.caller) || self.active.contains_key(&j.caller) {
            return Err(EngineError::DuplicateCaller(j.caller));
        }
        let cfg = &self.queues[q].cfg;
        if cfg.maxlen > 0 && self.queues[q].callers.len() >= cfg.maxlen {
            return Err(EngineError::QueueFull(cfg.name.clone()));
        }
        if !cfg.joinempty.is_empty() && self.queue_empty(q, cfg.joinempty, j.penalties) {
            return Err(EngineError::JoinEmpty(cfg.name.clone()));
        }
        let rule_name = j.rule.clone().or_else(|| cfg.defaultrule.clone());
        let rules = rule_name
            .and_then(|r| self.rules.get(&r.to_ascii_lowercase()).cloned())
            .unwrap_or_default();
        let ck = self.next_caller;
        self.next_caller += 1;
        // Behind every caller of higher priority, and of equal priority who joined no later.
        let joined = j.place.joined_at.map_or(self.now, |t| t.min(self.now));
        let joined_ms = j
            .place
            .joined_ms
            .unwrap_or_else(|| u64::try_from(self.now.as_millis()).unwrap_or(u64::MAX));
        let pos = {
            let qu = &self.queues[q];
            // With an original join time (a caller moved from another node keeps its place),
            // behind every caller of higher priority or of equal priority that joined no later.
            let behind = |c: &Caller| {
                c.priority < j.place.priority
                    || (c.priority == j.place.priority
                        && (c.joined > joined
                            || (j.place.joined_ms.is_some() && c.joined_ms > joined_ms)))
            };
            qu.callers
                .iter()
                .position(|k| self.callers.get(k).is_some_and(behind))
                .unwrap_or(qu.callers.len())
        };
        self.queues[q].callers.insert(pos, ck);
        self.queues[q].stats.joined += 1;
        let opos = pos + 1;
        self.callers.insert(
            ck,
            Caller {
                id: j.caller.clone(),
                queue: q,
                priority: j.place.priority,
                joined,
                joined_ms,
                opos,
                penalties: j.penalties,
                rules,
                next_rule: 0,
                phase: Phase::Waiting,
                linpos: 0,
                gen: 0,
            },
        );
        self.caller_by_id.insert(j.caller.clone(), ck);
        let qname = self.queues[q].cfg.name.clone();
        self.log(
            &j.caller,
            &qname,
            "NONE",
            "ENTERQUEUE",
            vec![String::new(), j.caller_number.clone(), opos.to_string()],
        );
        if let Some(w) = j.max_wait {
            self.push_timer(self.now.saturating_add(w), Timer::Expire { caller: ck });
        }
        self.publish_waiting(ck);
        if !self.settle.is_zero() {
            self.push_timer(
                self.now.saturating_add(self.settle),
                Timer::Settle { queue: q },
            );
        }
        self.apply_rules(ck);
        self.dispatch(q);
        Ok(opos)
    }

    /// A waiting caller hung up: ABANDON (position, original position, wait). Outstanding offers
    /// are cancelled (RINGCANCELED).
    pub fn leave(&mut self, now: Time, caller: &str) -> Result<(), EngineError> {
        self.advance(now);
        let ck = *self
            .caller_by_id
            .get(caller)
            .ok_or_else(|| EngineError::UnknownCaller(caller.to_string()))?;
        if let Some(q) = self.callers.get(&ck).map(|c| c.queue) {
            self.queues[q].stats.abandoned += 1;
        }
        self.exit_caller(ck, "ABANDON", None);
        Ok(())
    }

    /// The gateway's result for an [`Action::Offer`]. A stale id (the engine already cancelled
    /// or timed the offer out) gives [`EngineError::NoSuchOffer`] and changes nothing.
    pub fn offer_outcome(
        &mut self,
        now: Time,
        offer: OfferId,
        outcome: OfferOutcome,
    ) -> Result<(), EngineError> {
        self.advance(now);
        let (ck, a) = *self
            .offers
            .get(&offer)
            .ok_or(EngineError::NoSuchOffer(offer))?;
        match outcome {
            OfferOutcome::Answered => self.connect(ck, a),
            OfferOutcome::NoAnswer => {
                self.end_offer(ck, a, false, true);
                if let Some(q) = self.callers.get(&ck).map(|c| c.queue) {
                    self.missed_offer(q, a, Missed::NoAnswer);
                }
                self.end_round_if_idle(ck);
                self.dispatch_agent(a);
            }
            OfferOutcome::Busy | OfferOutcome::Unavailable => {
                self.end_offer(ck, a, false, true);
                if let Some(q) = self.callers.get(&ck).map(|c| c.queue) {
                    let why = match outcome {
                        OfferOutcome::Busy => Missed::Busy,
                        _ => Missed::Unavailable,
                    };
                    self.missed_offer(q, a, why);
                }
                self.continue_after_busy(ck);
                self.dispatch_agent(a);
            }
            OfferOutcome::Refused => {
                self.end_offer_as(ck, a, false, None);
                self.continue_after_busy(ck);
                self.dispatch_agent(a);
            }
            OfferOutcome::Taken => {
                self.end_offer_as(ck, a, false, None);
                self.taken(ck, a);
            }
        }
        Ok(())
    }

    /// The uniqueid of the agent's call answering `offer` (the gateway's, from its 2xx): the
    /// bridged channel CONNECT logs (app_queue's `ast_channel_uniqueid(peer)`). Call it before
    /// [`OfferOutcome::Answered`]; ignored for an offer that is not outstanding.
    pub fn set_bridged_channel(&mut self, offer: OfferId, channel: &str) {
        if self.offers.contains_key(&offer) {
            self.bridged.insert(offer, channel.to_owned());
        }
    }

    /// A connected call ended. Logs COMPLETECALLER/COMPLETEAGENT; the member's last call is now
    /// (wrap-up starts), in every queue with `shared_lastcall`.
    pub fn call_completed(
        &mut self,
        now: Time,
        caller: &str,
        by: CompletedBy,
    ) -> Result<(), EngineError> {
        self.advance(now);
        let act = self
            .active
            .remove(caller)
            .ok_or_else(|| EngineError::UnknownCaller(caller.to_string()))?;
        let a = act.agent;
        self.agents[a].in_calls = self.agents[a].in_calls.saturating_sub(1);
        let talk = self.now.saturating_sub(act.connected);
        let q = act.queue;
        let event = match by {
            CompletedBy::Caller => "COMPLETECALLER",
            CompletedBy::Agent => "COMPLETEAGENT",
        };
        let name = self.queues[q]
            .index
            .get(&a)
            .map(|mi| self.queues[q].members[*mi].name.clone())
            .unwrap_or_else(|| self.agents[a].interface.clone());
        let qname = self.queues[q].cfg.name.clone();
        self.log(
            caller,
            &qname,
            &name,
            event,
            vec![
                act.holdtime.as_secs().to_string(),
                talk.as_secs().to_string(),
                act.opos.to_string(),
            ],
        );
        let st = &mut self.queues[q].stats;
        st.completed += 1;
        st.total_talktime = st.total_talktime.saturating_add(talk);
        st.last_call = Some(self.now);
        if let Some(mi) = self.queues[q].index.get(&a).copied() {
            let m = &mut self.queues[q].members[mi];
            m.talk_time = m.talk_time.saturating_add(talk);
        }
        let affected: Vec<QueueId> = if self.shared_lastcall {
            self.agents[a].queues.clone()
        } else if self.queues[q].index.contains_key(&a) {
            vec![q]
        } else {
            Vec::new()
        };
        for aq in affected {
            let Some(mi) = self.queues[aq].index.get(&a).copied() else {
                continue;
            };
            let m = &mut self.queues[aq].members[mi];
            m.calls = m.calls.saturating_add(1);
            m.last_call = Some(self.now);
            let w = self.wrapup_of(aq, mi);
            if w > Duration::ZERO {
                self.push_timer(self.now.saturating_add(w), Timer::Wrap { queue: aq });
            }
        }
        self.dispatch_agent(a);
        Ok(())
    }

    // ------------------------------------------------------------------ internals: lookup

    fn qid(&self, name: &str) -> Result<QueueId, EngineError> {
        self.queue_by_name
            .get(&name.to_ascii_lowercase())
            .copied()
            .ok_or_else(|| EngineError::UnknownQueue(name.to_string()))
    }

    fn membership(&self, q: QueueId, interface: &str) -> Result<(AgentId, usize), EngineError> {
        let not = || EngineError::NotMember {
            queue: self.queues[q].cfg.name.clone(),
            interface: interface.to_string(),
        };
        let a = *self
            .agent_by_key
            .get(&normalize_key(interface))
            .ok_or_else(not)?;
        let mi = *self.queues[q].index.get(&a).ok_or_else(not)?;
        Ok((a, mi))
    }

    fn targets(
        &self,
        interface: &str,
        queue: Option<&str>,
    ) -> Result<Vec<(QueueId, usize)>, EngineError> {
        match queue {
            Some(qn) => {
                let q = self.qid(qn)?;
                let (_, mi) = self.membership(q, interface)?;
                Ok(vec![(q, mi)])
            }
            None => {
                let not = || EngineError::NotMember {
                    queue: "*".to_string(),
                    interface: interface.to_string(),
                };
                let a = *self
                    .agent_by_key
                    .get(&normalize_key(interface))
                    .ok_or_else(not)?;
                let v: Vec<_> = self.agents[a]
                    .queues
                    .iter()
                    .filter_map(|q| self.queues[*q].index.get(&a).map(|mi| (*q, *mi)))
                    .collect();
                if v.is_empty() {
                    return Err(not());
                }
                Ok(v)
            }
        }
    }

    fn device_for(&mut self, key: &str) -> usize {
        if let Some(d) = self.device_by_key.get(key) {
            return *d;
        }
        let d = self.devices.len();
        self.devices.push(Device {
            state: DeviceState::Unknown,
            since: self.now,
            agents: Vec::new(),
        });
        self.device_by_key.insert(key.to_string(), d);
        d
    }

    fn agent_for(&mut self, interface: &str, state_interface: Option<&str>) -> AgentId {
        let key = normalize_key(interface);
        let dkey = normalize_key(state_interface.unwrap_or(interface));
        let d = self.device_for(&dkey);
        if let Some(a) = self.agent_by_key.get(&key).copied() {
            let old = self.agents[a].device;
            if old != d && state_interface.is_some() {
                self.devices[old].agents.retain(|x| *x != a);
                self.devices[d].agents.push(a);
                self.agents[a].device = d;
            }
            return a;
        }
        let a = self.agents.len();
        self.agents.push(Agent {
            interface: interface.to_string(),
            device: d,
            queues: Vec::new(),
            offering: None,
            in_calls: 0,
            unreachable: false,
        });
        self.devices[d].agents.push(a);
        self.agent_by_key.insert(key, a);
        a
    }

    fn insert_member(
        &mut self,
        q: QueueId,
        mc: MemberConfig,
        dynamic: bool,
        log: bool,
    ) -> Result<(), EngineError> {
        let a = self.agent_for(&mc.interface, mc.state_interface.as_deref());
        if self.queues[q].index.contains_key(&a) {
            return Err(EngineError::AlreadyMember {
                queue: self.queues[q].cfg.name.clone(),
                interface: mc.interface,
            });
        }
        let name = mc.name.clone().unwrap_or_else(|| mc.interface.clone());
        let qu = &mut self.queues[q];
        qu.index.insert(a, qu.members.len());
        qu.members.push(Member {
            agent: a,
            name: name.clone(),
            penalty: mc.penalty,
            paused: mc.paused,
            reason: String::new(),
            paused_since: mc.paused.then_some(self.now),
            paused_before: Duration::ZERO,
            missed: 0,
            ringinuse: mc.ringinuse,
            wrapuptime: mc.wrapuptime,
            dynamic,
            calls: 0,
            answered: 0,
            last_call: None,
            talk_time: Duration::ZERO,
        });
        let queues = &self.queues;
        let ag = &mut self.agents[a];
        ag.queues.push(q);
        ag.queues
            .sort_by_key(|x| (Reverse(queues[*x].cfg.weight), *x));
        if log {
            let qname = self.queues[q].cfg.name.clone();
            let data = if mc.paused { "PAUSED" } else { "" };
            self.log(
                "MANAGER",
                &qname,
                &mc.interface,
                "ADDMEMBER",
                vec![data.to_string()],
            );
        }
        Ok(())
    }

    fn set_paused(
        &mut self,
        now: Time,
        interface: &str,
        queue: Option<&str>,
        reason: &str,
        paused: bool,
    ) -> Result<(), EngineError> {
        self.advance(now);
        let targets = self.targets(interface, queue)?;
        self.mark_paused(interface, queue.is_none(), &targets, reason, paused);
        for (q, _) in targets {
            self.dispatch(q);
        }
        Ok(())
    }

    /// Sets the pause flag of `targets` and logs as app_queue's `set_member_paused`: first
    /// PAUSEALL/UNPAUSEALL (callid and queue `NONE`, the interface, no data) when every queue
    /// is meant, then PAUSE/UNPAUSE per queue with the reason (an unpause without a reason
    /// logs an empty one). No dispatch: the caller does it.
    fn mark_paused(
        &mut self,
        interface: &str,
        all: bool,
        targets: &[(QueueId, usize)],
        reason: &str,
        paused: bool,
    ) {
        if all {
            let ev = if paused { "PAUSEALL" } else { "UNPAUSEALL" };
            self.log("NONE", "NONE", interface, ev, vec![String::new()]);
        }
        let now = self.now;
        for (q, mi) in targets {
            let m = &mut self.queues[*q].members[*mi];
            if paused && (!m.paused || m.reason != reason) {
                m.paused_since = Some(now);
                m.paused_before = Duration::ZERO;
            }
            if !paused {
                m.paused_since = None;
                m.paused_before = Duration::ZERO;
                m.missed = 0;
            }
            m.paused = paused;
            m.reason = if paused {
                reason.to_string()
            } else {
                String::new()
            };
            let name = m.name.clone();
            let qname = self.queues[*q].cfg.name.clone();
            let ev = if paused { "PAUSE" } else { "UNPAUSE" };
            self.log("NONE", &qname, &name, ev, vec![reason.to_string()]);
        }
    }

    // ------------------------------------------------------------------ internals: availability

    fn effective_state(&self, a: AgentId) -> DeviceState {
        let ag = &self.agents[a];
        if ag.unreachable {
            return DeviceState::Unavailable;
        }
        let st = self.devices[ag.device].state;
        if ag.in_calls > 0 && matches!(st, DeviceState::NotInUse | DeviceState::Unknown) {
            DeviceState::InUse
        } else {
            st
        }
    }

    fn wrapup_of(&self, q: QueueId, mi: usize) -> Duration {
        let qu = &self.queues[q];
        let m = &qu.members[mi];
        secs(m.wrapuptime.filter(|w| *w > 0).unwrap_or(qu.cfg.wrapuptime))
    }

    fn in_wrapup(&self, q: QueueId, mi: usize) -> bool {
        let w = self.wrapup_of(q, mi);
        w > Duration::ZERO
            && self.queues[q].members[mi]
                .last_call
                .is_some_and(|lc| self.now < lc.saturating_add(w))
    }

    fn member_available(&self, q: QueueId, mi: usize) -> bool {
        let qu = &self.queues[q];
        let m = &qu.members[mi];
        if self.agents[m.agent].offering.is_some() {
            return false;
        }
        let ringinuse = m.ringinuse.unwrap_or(qu.cfg.ringinuse);
        state_available(self.effective_state(m.agent), ringinuse, m.paused)
            && !self.in_wrapup(q, mi)
    }

    /// app_queue's `num_available_members` (capped at 1 for serial or ringall queues).
    fn num_available(&self, q: QueueId) -> usize {
        let qu = &self.queues[q];
        let cap = if !qu.cfg.autofill || qu.cfg.strategy == Strategy::RingAll {
            1
        } else {
            usize::MAX
        };
        let mut n = 0;
        for mi in 0..qu.members.len() {
            if self.member_available(q, mi) {
                n += 1;
                if n >= cap {
                    break;
                }
            }
        }
        n
    }

    fn queue_empty(&self, q: QueueId, conds: EmptyConditions, penalties: Penalties) -> bool {
        let qu = &self.queues[q];
        !qu.members.iter().enumerate().any(|(mi, m)| {
            counts_as_present(
                conds,
                self.effective_state(m.agent),
                penalties.admit(m.penalty).is_none(),
                m.paused,
                self.in_wrapup(q, mi),
            )
        })
    }

    /// `compare_weight`: a higher-weight queue of this agent with callers ≥ its available
    /// members keeps the agent.
    fn outweighed(&self, q: QueueId, a: AgentId) -> bool {
        if !self.weights_differ {
            return false;
        }
        let w = self.queues[q].cfg.weight;
        self.agents[a].queues.iter().any(|&q2| {
            let o = &self.queues[q2];
            q2 != q
                && o.cfg.weight > w
                && !o.callers.is_empty()
                && o.callers.len() >= self.num_available(q2)
        })
    }

    // ------------------------------------------------------------------ internals: timers

    fn push_timer(&mut self, at: Time, t: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, t)));
    }

    fn timer_valid(&self, t: Timer) -> bool {
        match t {
            Timer::Ring { caller, gen } => self
                .callers
                .get(&caller)
                .is_some_and(|c| c.gen == gen && matches!(c.phase, Phase::Ringing { .. })),
            Timer::Retry { caller, gen } => self
                .callers
                .get(&caller)
                .is_some_and(|c| c.gen == gen && matches!(c.phase, Phase::Retry)),
            Timer::Expire { caller } => self.callers.contains_key(&caller),
            Timer::Rule { caller, idx } => self
                .callers
                .get(&caller)
                .is_some_and(|c| c.next_rule == idx),
            Timer::Wrap { queue } | Timer::Settle { queue } => queue < self.queues.len(),
            Timer::Untaken { device, since } => self
                .devices
                .get(device)
                .is_some_and(|d| d.since == since && d.state == DeviceState::InUse),
        }
    }

    fn advance(&mut self, now: Time) {
        if now > self.now {
            self.now = now;
        }
        // Timers created while firing (always later than `now`, except at the saturated end of
        // time) wait for the next call, so a cascade can never loop.
        let last_seq = self.timer_seq;
        while let Some(Reverse((t, seq, timer))) = self.timers.peek().copied() {
            if t > self.now || seq > last_seq {
                break;
            }
            self.timers.pop();
            if self.timer_valid(timer) {
                self.fire(timer);
            }
        }
    }

    fn fire(&mut self, t: Timer) {
        match t {
            Timer::Ring { caller, .. } => {
                let offered: Vec<AgentId> = match self.callers.get(&caller).map(|c| &c.phase) {
                    Some(Phase::Ringing { offered, .. }) => {
                        offered.iter().map(|(a, _, _)| *a).collect()
                    }
                    _ => Vec::new(),
                };
                let q = self.callers.get(&caller).map(|c| c.queue);
                for a in &offered {
                    self.end_offer(caller, *a, true, true);
                    if let Some(q) = q {
                        self.missed_offer(q, *a, Missed::NoAnswer);
                    }
                }
                self.end_round_if_idle(caller);
                for a in offered {
                    self.dispatch_agent(a);
                }
            }
            Timer::Retry { caller, .. } => {
                if let Some(c) = self.callers.get_mut(&caller) {
                    c.phase = Phase::Waiting;
                    c.gen += 1;
                    let q = c.queue;
                    self.dispatch(q);
                }
            }
            Timer::Expire { caller } => {
                if let Some(q) = self.callers.get(&caller).map(|c| c.queue) {
                    self.queues[q].stats.timed_out += 1;
                }
                self.exit_caller(caller, "EXITWITHTIMEOUT", Some(ExitReason::Timeout));
            }
            Timer::Rule { caller, .. } => {
                self.apply_rules(caller);
                if let Some(q) = self.callers.get(&caller).map(|c| c.queue) {
                    self.dispatch(q);
                }
            }
            Timer::Wrap { queue } | Timer::Settle { queue } => self.dispatch(queue),
            Timer::Untaken { device, .. } => self.set_device(device, DeviceState::NotInUse),
        }
    }

    /// Apply every penalty rule that is due and schedule the next one.
    fn apply_rules(&mut self, ck: CallerKey) {
        let now = self.now;
        let Some(c) = self.callers.get_mut(&ck) else {
            return;
        };
        while let Some(r) = c.rules.get(c.next_rule).copied() {
            let due = c.joined.saturating_add(r.time);
            if due > now {
                let idx = c.next_rule;
                self.push_timer(due, Timer::Rule { caller: ck, idx });
                return;
            }
            c.penalties.apply(&r);
            c.next_rule += 1;
        }
    }

    // ------------------------------------------------------------------ internals: actions

    fn log(
        &mut self,
        callid: &str,
        queue: &str,
        agent: &str,
        event: &'static str,
        data: Vec<String>,
    ) {
        self.actions.push_back(Action::QueueLog(QueueLogEvent {
            time: self.now,
            callid: callid.to_string(),
            queue: queue.to_string(),
            agent: agent.to_string(),
            event,
            data,
        }));
    }

    fn member_name(&self, q: QueueId, a: AgentId) -> String {
        self.queues[q]
            .index
            .get(&a)
            .map(|mi| self.queues[q].members[*mi].name.clone())
            .unwrap_or_else(|| self.agents[a].interface.clone())
    }

    /// Stop one outstanding offer: frees the agent, logs RINGNOANSWER (`rna`) or RINGCANCELED,
    /// and emits CancelOffer when `cancel` (the engine, not the gateway, ends it).
    fn end_offer(&mut self, ck: CallerKey, a: AgentId, cancel: bool, rna: bool) {
        let event = if rna { "RINGNOANSWER" } else { "RINGCANCELED" };
        self.end_offer_as(ck, a, cancel, Some(event));
    }

    /// [`Self::end_offer`] logging `event` (nothing with `None`).
    fn end_offer_as(
        &mut self,
        ck: CallerKey,
        a: AgentId,
        cancel: bool,
        event: Option<&'static str>,
    ) {
        let now = self.now;
        let Some(c) = self.callers.get_mut(&ck) else {
            return;
        };
        let Phase::Ringing { offered, .. } = &mut c.phase else {
            return;
        };
        let Some(i) = offered.iter().position(|(x, _, _)| *x == a) else {
            return;
        };
        let (_, start, oid) = offered.remove(i);
        self.offers.remove(&oid);
        self.bridged.remove(&oid);
        let id = c.id.clone();
        let q = c.queue;
        if self.agents[a].offering == Some(ck) {
            self.agents[a].offering = None;
        }
        let qname = self.queues[q].cfg.name.clone();
        let name = self.member_name(q, a);
        let ms = now.saturating_sub(start).as_millis().to_string();
        if let Some(event) = event {
            self.log(&id, &qname, &name, event, vec![ms]);
        }
        if cancel {
            self.actions.push_back(Action::CancelOffer {
                id: oid,
                caller: id,
                queue: qname,
                interface: self.agents[a].interface.clone(),
            });
        }
    }

    /// After a busy: ring the next member within the same window (non-ringall), else end the
    /// round once nothing is ringing.
    fn continue_after_busy(&mut self, ck: CallerKey) {
        let Some(c) = self.callers.get(&ck) else {
            return;
        };
        let ringall = self.queues[c.queue].cfg.strategy == Strategy::RingAll;
        let idle = matches!(&c.phase, Phase::Ringing { offered, .. } if offered.is_empty());
        if idle && !ringall && self.try_offer(ck) {
            return;
        }
        self.end_round_if_idle(ck);
    }

    /// The arbiter refused agent `a` (in a call already): it reads INUSE until its next device
    /// state; the caller tries another member, else waits (no `retry`): the next device state
    /// that frees a member dispatches the queue.
    fn taken(&mut self, ck: CallerKey, a: usize) {
        let d = self.agents[a].device;
        if matches!(
            self.devices[d].state,
            DeviceState::NotInUse | DeviceState::Unknown
        ) {
            self.devices[d].state = DeviceState::InUse;
            self.devices[d].since = self.now;
            // Should the fabric never say (its NOT_INUSE came before the refusal), the member
            // is free again after this bound.
            let since = self.now;
            self.push_timer(
                since.saturating_add(UNTAKEN_AFTER),
                Timer::Untaken { device: d, since },
            );
        }
        let Some(c) = self.callers.get(&ck) else {
            return;
        };
        let ringall = self.queues[c.queue].cfg.strategy == Strategy::RingAll;
        let idle = matches!(&c.phase, Phase::Ringing { offered, .. } if offered.is_empty());
        if !idle || (!ringall && self.try_offer(ck)) {
            return;
        }
        if let Some(c) = self.callers.get_mut(&ck) {
            c.gen += 1;
            c.phase = Phase::Waiting;
            let q = c.queue;
            self.dispatch(q);
        }
    }

    /// If the caller rings nobody any more, the attempt is over: wait `retry`.
    fn end_round_if_idle(&mut self, ck: CallerKey) {
        let now = self.now;
        let Some(c) = self.callers.get_mut(&ck) else {
            return;
        };
        if !matches!(&c.phase, Phase::Ringing { offered, .. } if offered.is_empty()) {
            return;
        }
        let retry = secs(self.queues[c.queue].cfg.retry);
        c.gen += 1;
        if retry.is_zero() {
            c.phase = Phase::Waiting;
            let q = c.queue;
            self.dispatch(q);
        } else {
            c.phase = Phase::Retry;
            let gen = c.gen;
            self.push_timer(now.saturating_add(retry), Timer::Retry { caller: ck, gen });
        }
    }

    fn connect(&mut self, ck: CallerKey, a: AgentId) {
        let Some(c) = self.callers.get(&ck) else {
            return;
        };
        let others: Vec<AgentId> = match &c.phase {
            Phase::Ringing { offered, .. } => offered
                .iter()
                .map(|(x, _, _)| *x)
                .filter(|x| *x != a)
                .collect(),
            _ => Vec::new(),
        };
        let ring_start = match &c.phase {
            Phase::Ringing { offered, .. } => offered
                .iter()
                .find(|(x, _, _)| *x == a)
                .map(|(_, t, _)| *t)
                .unwrap_or(self.now),
            _ => self.now,
        };
        let mut channel = String::new();
        if let Phase::Ringing { offered, .. } = &c.phase {
            for (_, _, oid) in offered {
                if self.offers.get(oid).is_some_and(|(_, x)| *x == a) {
                    self.offers.remove(oid);
                    if let Some(ch) = self.bridged.remove(oid) {
                        channel = ch;
                    }
                }
            }
        }
        for o in &others {
            self.end_offer(ck, *o, true, false);
        }
        let Some(c) = self.callers.remove(&ck) else {
            return;
        };
        self.caller_by_id.remove(&c.id);
        let q = c.queue;
        self.queues[q].callers.retain(|k| *k != ck);
        let qname = self.queues[q].cfg.name.clone();
        self.withdraw_waiting(&qname, &c.id);
        self.agents[a].offering = None;
        self.agents[a].in_calls = self.agents[a].in_calls.saturating_add(1);
        let hold = self.now.saturating_sub(c.joined);
        let ring = self.now.saturating_sub(ring_start);
        let sl = secs(self.queues[q].cfg.servicelevel);
        {
            let st = &mut self.queues[q].stats;
            st.answered += 1;
            st.total_holdtime = st.total_holdtime.saturating_add(hold);
            if hold <= sl {
                st.answered_within_sl += 1;
            }
            st.holdtime_weighted_secs = (st.holdtime_weighted_secs / 4)
                .saturating_mul(3)
                .saturating_add(hold.as_secs() / 4);
        }
        if let Some(mi) = self.queues[q].index.get(&a).copied() {
            self.queues[q].members[mi].answered += 1;
            self.queues[q].members[mi].missed = 0;
        }
        let qname = self.queues[q].cfg.name.clone();
        let name = self.member_name(q, a);
        self.log(
            &c.id,
            &qname,
            &name,
            "CONNECT",
            vec![
                hold.as_secs().to_string(),
                channel,
                ring.as_secs().to_string(),
            ],
        );
        self.actions.push_back(Action::Connect {
            caller: c.id.clone(),
            queue: qname,
            interface: self.agents[a].interface.clone(),
            holdtime: hold,
        });
        self.active.insert(
            c.id,
            Active {
                queue: q,
                agent: a,
                holdtime: hold,
                connected: self.now,
                opos: c.opos,
            },
        );
        self.after_caller_left(q);
        for o in others {
            self.dispatch_agent(o);
        }
    }

    /// Remove a waiting caller (ABANDON / EXITWITHTIMEOUT / EXITEMPTY).
    fn exit_caller(&mut self, ck: CallerKey, event: &'static str, reason: Option<ExitReason>) {
        let Some(c) = self.callers.get(&ck) else {
            return;
        };
        let q = c.queue;
        let offered: Vec<AgentId> = match &c.phase {
            Phase::Ringing { offered, .. } => offered.iter().map(|(x, _, _)| *x).collect(),
            _ => Vec::new(),
        };
        for a in &offered {
            self.end_offer(ck, *a, true, false);
        }
        let Some(c) = self.callers.remove(&ck) else {
            return;
        };
        self.caller_by_id.remove(&c.id);
        let pos = self.queues[q]
            .callers
            .iter()
            .position(|k| *k == ck)
            .map(|p| p + 1)
            .unwrap_or(0);
        self.queues[q].callers.retain(|k| *k != ck);
        let wait = self.now.saturating_sub(c.joined).as_secs();
        let qname = self.queues[q].cfg.name.clone();
        self.withdraw_waiting(&qname, &c.id);
        self.log(
            &c.id,
            &qname,
            "NONE",
            event,
            vec![pos.to_string(), c.opos.to_string(), wait.to_string()],
        );
        if let Some(reason) = reason {
            self.actions.push_back(Action::CallerRemoved {
                caller: c.id,
                queue: qname,
                reason,
            });
        }
        self.after_caller_left(q);
        for a in offered {
            self.dispatch_agent(a);
        }
    }

    /// A caller left `q`: the next one may be served, and with weights, lower-weight queues of
    /// its free members may now get them.
    fn after_caller_left(&mut self, q: QueueId) {
        self.dispatch(q);
        if self.weights_differ {
            let free: Vec<AgentId> = (0..self.queues[q].members.len())
                .filter(|mi| self.member_available(q, *mi))
                .map(|mi| self.queues[q].members[mi].agent)
                .collect();
            for a in free {
                self.dispatch_agent(a);
            }
        }
    }

    /// Dispatch every queue of an agent, highest weight first.
    fn dispatch_agent(&mut self, a: AgentId) {
        let qs = self.agents[a].queues.clone();
        for q in qs {
            if self.agents[a].offering.is_some() {
                break;
            }
            self.dispatch(q);
        }
    }

    fn check_leave_empty(&mut self, q: QueueId) {
        let conds = self.queues[q].cfg.leavewhenempty;
        if conds.is_empty() || self.queues[q].callers.is_empty() {
            return;
        }
        let mut plain: Option<bool> = None;
        let mut out = Vec::new();
        for ck in &self.queues[q].callers {
            let Some(c) = self.callers.get(ck) else {
                continue;
            };
            if matches!(c.phase, Phase::Ringing { .. }) {
                continue;
            }
            let empty = if c.penalties.is_unlimited() {
                *plain.get_or_insert_with(|| self.queue_empty(q, conds, Penalties::default()))
            } else {
                self.queue_empty(q, conds, c.penalties)
            };
            if empty {
                out.push(*ck);
            }
        }
        for ck in out {
            self.queues[q].stats.exited_empty += 1;
            self.exit_caller(ck, "EXITEMPTY", Some(ExitReason::Empty));
        }
    }

    /// Serve the callers of one queue whose turn it is (app_queue's `is_our_turn`), in the
    /// global order when other nodes serve the queue too (`global.rs`: a remote caller takes
    /// a turn like a local one).
    fn dispatch(&mut self, q: QueueId) {
        self.check_leave_empty(q);
        let places = self.places(q);
        let cfg = &self.queues[q].cfg;
        if !cfg.autofill || cfg.strategy == Strategy::RingAll {
            if let Some(&global::Place::Local(head)) = places.first() {
                if !self.settling(head)
                    && self
                        .callers
                        .get(&head)
                        .is_some_and(|c| matches!(c.phase, Phase::Waiting))
                {
                    self.try_offer(head);
                }
            }
            return;
        }
        let mut avl = self.num_available(q);
        let mut idx = 0;
        let mut i = 0;
        while idx < avl && i < places.len() {
            let place = places[i];
            i += 1;
            let global::Place::Local(ck) = place else {
                // A caller ahead at another node: its turn, whoever serves it.
                idx += 1;
                continue;
            };
            if self.settling(ck) {
                // Not offered yet, and nobody behind it jumps ahead.
                idx += 1;
                continue;
            }
            match self.callers.get(&ck).map(|c| &c.phase) {
                Some(Phase::Ringing { .. }) | None => continue,
                Some(Phase::Retry) => idx += 1,
                Some(Phase::Waiting) => {
                    if self.try_offer(ck) {
                        avl = avl.saturating_sub(1);
                    } else {
                        idx += 1;
                    }
                }
            }
        }
    }

    /// Pick member(s) for a caller by the queue's strategy and offer. Returns false when no
    /// member qualifies.
    fn try_offer(&mut self, ck: CallerKey) -> bool {
        let now = self.now;
        let Some(c) = self.callers.get(&ck) else {
            return false;
        };
        let q = c.queue;
        let (tried, until): (&[AgentId], Option<Option<Time>>) = match &c.phase {
            Phase::Waiting => (&[], None),
            Phase::Ringing { tried, until, .. } => (tried.as_slice(), Some(*until)),
            Phase::Retry => return false,
        };
        if let Some(Some(u)) = until {
            if u.saturating_sub(now) <= MIN_RING_LEFT {
                return false;
            }
        }
        let qu = &self.queues[q];
        let strategy = qu.cfg.strategy;
        let use_penalty = qu.members.len() > qu.cfg.penaltymemberslimit;
        let mut best: Vec<(i64, usize)> = Vec::new();
        for (mi, m) in qu.members.iter().enumerate() {
            if tried.contains(&m.agent) || !self.member_available(q, mi) {
                continue;
            }
            let penalty = if use_penalty {
                match c.penalties.admit(m.penalty) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                m.penalty
            };
            if self.outweighed(q, m.agent) {
                continue;
            }
            let input = MetricIn {
                strategy,
                penalty,
                use_penalty,
                pos: mi,
                rrpos: qu.rrpos,
                linpos: c.linpos,
                calls: m.calls,
                idle_secs: m.last_call.map(|lc| now.saturating_sub(lc).as_secs()),
            };
            let v = metric(&input, &mut self.rng);
            match best.first() {
                Some((b, _)) if v > *b => {}
                Some((b, _)) if v == *b && strategy == Strategy::RingAll => best.push((v, mi)),
                Some((b, _)) if v == *b => {}
                _ => {
                    best.clear();
                    best.push((v, mi));
                }
            }
        }
        if best.is_empty() {
            return false;
        }
        let timeout = qu.cfg.timeout_d();
        let picked: Vec<(usize, AgentId)> = best
            .iter()
            .map(|(_, mi)| (*mi, qu.members[*mi].agent))
            .collect();
        let new_round = until.is_none();
        let until = match until {
            Some(u) => u,
            None => timeout.map(|t| now.saturating_add(t)),
        };
        let last_mi = picked.last().map(|(mi, _)| *mi).unwrap_or(0);
        match strategy {
            Strategy::RrMemory | Strategy::RrOrdered => self.queues[q].rrpos = last_mi + 1,
            _ => {}
        }
        let qname = self.queues[q].cfg.name.clone();
        let Some(c) = self.callers.get_mut(&ck) else {
            return false;
        };
        if strategy == Strategy::Linear {
            c.linpos = last_mi + 1;
        }
        if new_round {
            c.gen += 1;
            c.phase = Phase::Ringing {
                offered: Vec::new(),
                tried: Vec::new(),
                until,
            };
        }
        let gen = c.gen;
        let id = c.id.clone();
        let first_offer = self.next_offer;
        self.next_offer += picked.len() as u64;
        if let Phase::Ringing { offered, tried, .. } = &mut c.phase {
            for (i, (_, a)) in picked.iter().enumerate() {
                offered.push((*a, now, OfferId(first_offer + i as u64)));
                tried.push(*a);
            }
        }
        for (i, (_, a)) in picked.iter().enumerate() {
            let oid = OfferId(first_offer + i as u64);
            self.offers.insert(oid, (ck, *a));
            self.agents[*a].offering = Some(ck);
            self.actions.push_back(Action::Offer {
                id: oid,
                caller: id.clone(),
                queue: qname.clone(),
                interface: self.agents[*a].interface.clone(),
                ring_timeout: until.map(|u| u.saturating_sub(now)),
            });
        }
        if new_round {
            if let Some(u) = until {
                self.push_timer(u, Timer::Ring { caller: ck, gen });
            }
        }
        true
    }
}
