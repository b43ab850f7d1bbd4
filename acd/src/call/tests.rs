//! Call control in virtual time, behind a real transaction layer: a fake relay, a fake
//! fabric, and a gateway played by the test (it answers keep-alives and our BYEs; everything
//! else is sent by hand). Each test asserts what goes on the wire, what the media scripts are
//! told and the queue_log lines.

use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rsip::headers::{Contact, UntypedHeader};

use sip_core::message::SipMessage;
use sip_core::test_util::request;
use sip_core::transaction::{Config as TxConfig, Transport as TxTransport};

use super::*;
use crate::engine::{MemberConfig, QueueConfig, Strategy};

const GW: &str = "192.0.2.10:5060";
const GW2: &str = "192.0.2.20:5060";
const LOCAL: &str = "192.0.2.1:5070";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[derive(Default)]
struct FakeMedia {
    open: Vec<LegId>,
    closed: Vec<LegId>,
    remotes: Vec<(LegId, SocketAddr)>,
    bridged: Vec<(LegId, LegId)>,
    exhausted: bool,
    /// (leg, the leg it was opened beside).
    beside: Vec<(LegId, LegId)>,
}

impl Media for FakeMedia {
    fn open(&mut self, leg: LegId) -> Option<SocketAddr> {
        if self.exhausted {
            return None;
        }
        self.open.push(leg);
        let port = 20000 + 2 * u16::try_from(leg.0).unwrap_or(0);
        Some(SocketAddr::new(addr(LOCAL).ip(), port))
    }
    fn open_beside(&mut self, leg: LegId, beside: LegId) -> Option<SocketAddr> {
        self.beside.push((leg, beside));
        self.open(leg)
    }
    fn set_remote(&mut self, leg: LegId, rtp: SocketAddr, _: Option<SocketAddr>) {
        self.remotes.push((leg, rtp));
    }
    fn bridge(&mut self, a: LegId, b: LegId) -> bool {
        self.bridged.push((a, b));
        true
    }
    fn close(&mut self, leg: LegId) {
        self.closed.push(leg);
    }
}

#[derive(Default)]
struct FakeFabric {
    publishers: HashMap<String, Vec<(Eid, DeviceState)>>,
    members: Vec<(Eid, SocketAddr, bool)>,
}

impl Fabric for FakeFabric {
    fn publishers(&self, device: &str) -> Vec<(Eid, DeviceState)> {
        self.publishers.get(device).cloned().unwrap_or_default()
    }
    fn sip_members(&self) -> Vec<(Eid, SocketAddr, bool)> {
        self.members.clone()
    }
}

fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
}

fn hval(headers: &rsip::Headers, pick: impl Fn(&Header) -> Option<String>) -> String {
    headers.iter().find_map(pick).unwrap_or_default()
}

fn call_id(h: &rsip::Headers) -> String {
    hval(h, |h| match h {
        Header::CallId(c) => Some(c.value().trim().to_owned()),
        _ => None,
    })
}

fn from_of(h: &rsip::Headers) -> String {
    hval(h, |h| match h {
        Header::From(f) => Some(f.value().to_owned()),
        _ => None,
    })
}

fn to_of(h: &rsip::Headers) -> String {
    hval(h, |h| match h {
        Header::To(t) => Some(t.value().to_owned()),
        _ => None,
    })
}

fn cseq_method(h: &rsip::Headers) -> String {
    hval(h, |h| match h {
        Header::CSeq(c) => c.value().split_whitespace().nth(1).map(str::to_owned),
        _ => None,
    })
}

fn x_offer(req: &Request) -> sip_core::offer::Offer {
    let v = hval(&req.headers, |h| match h {
        Header::Other(n, v) if n.eq_ignore_ascii_case(sip_core::offer::HEADER) => Some(v.clone()),
        _ => None,
    });
    sip_core::offer::Offer::parse(&v).expect("X-CF-Offer")
}

fn user_of(req: &Request) -> String {
    req.uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .unwrap_or_default()
}

/// A caller as the test's gateway sees it.
struct CallerLeg {
    invite: Request,
    ok: Response,
    cseq: u32,
}

struct Rig {
    core: CallControl<FakeMedia, FakeFabric>,
    tl: TransactionLayer<Peer>,
    now: Instant,
    start: Instant,
    wall: Arc<Mutex<SystemTime>>,
    wall0: SystemTime,
    /// What we put on the wire (keep-alives and their answers left out), with its target.
    wire: Vec<(SocketAddr, SipMessage)>,
    /// Media scripts, queue_log lines and events.
    outs: Vec<Output>,
    /// Gateways that answer keep-alives.
    alive: Vec<SocketAddr>,
    /// Keep-alives sent.
    probes: usize,
    /// Keep-alives sent: when, to whom.
    probed: Vec<(Instant, SocketAddr)>,
    seq: u64,
    /// The gateway no longer answers our BYEs.
    byes_unanswered: bool,
}

fn queue(name: &str, members: &[&str]) -> QueueConfig {
    let mut q = QueueConfig::new(name);
    q.strategy = Strategy::RrMemory;
    q.ringinuse = false;
    q.timeout = 15;
    q.retry = 5;
    q.members = members.iter().map(|m| MemberConfig::new(*m)).collect();
    q
}

fn config(queues: Vec<QueueConfig>) -> CallConfig {
    CallConfig {
        local: addr(LOCAL),
        timers: TxConfig {
            t1: Duration::from_millis(500),
            ..TxConfig::default()
        },
        engine: EngineConfig {
            queues,
            ..EngineConfig::default()
        },
        numbers: [("500", "support"), ("501", "sales")]
            .into_iter()
            .map(|(n, q)| (n.to_owned(), q.to_owned()))
            .collect(),
        gateways: vec![addr(GW)],
        announce: crate::call::Announcements::default(),
        hot_desk: crate::call::HotDesk {
            login: "*45".into(),
            logout: "*46".into(),
        },
        reach: ReachConfig::default(),
        offer_provisional_timeout: Duration::from_secs(2),
        device_prefix: "PJSIP/".into(),
        caller_prefix: "acd-test".into(),
        pause_codes: crate::call::PauseCodes::default(),
    }
}

impl Rig {
    fn new(cfg: CallConfig) -> Rig {
        let start = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let wall = Arc::new(Mutex::new(wall0));
        let w = wall.clone();
        let timers = cfg.timers.clone();
        let core = CallControl::new(
            cfg,
            FakeMedia::default(),
            FakeFabric::default(),
            StdRng::seed_from_u64(7),
            Box::new(move || *w.lock().expect("wall")),
            start,
        )
        .expect("core");
        let mut rig = Rig {
            core,
            tl: TransactionLayer::new(timers),
            now: start,
            start,
            wall,
            wall0,
            wire: Vec::new(),
            outs: Vec::new(),
            alive: vec![addr(GW), addr(GW2)],
            probes: 0,
            probed: Vec::new(),
            seq: 0,
            byes_unanswered: false,
        };
        rig.pump();
        rig
    }

    /// Default rig: queue `support` (number 500) with PJSIP/2001 and PJSIP/2002, both free.
    fn support() -> Rig {
        let mut rig = Rig::new(config(vec![queue(
            "support",
            &["PJSIP/2001", "PJSIP/2002"],
        )]));
        rig.state("PJSIP/2001", DeviceState::NotInUse);
        rig.state("PJSIP/2002", DeviceState::NotInUse);
        rig
    }

    fn state(&mut self, dev: &str, st: DeviceState) {
        self.core.device_state(dev, st, self.now);
        self.pump();
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.tl.poll_event() {
                progressed = true;
                self.core.handle(ev, self.now);
            }
            while let Some(o) = self.core.poll_output() {
                progressed = true;
                if let Some(o) = apply(&mut self.tl, &mut self.core, o, self.now) {
                    self.outs.push(o);
                }
            }
            while let Some(t) = self.tl.poll_transmit() {
                progressed = true;
                let to = t.dest.addr;
                match t.message {
                    SipMessage::Request(r) if r.method == Method::Options => {
                        self.probes += 1;
                        self.probed.push((self.now, to));
                        if self.alive.contains(&to) && !t.retransmission {
                            let ok = message::response_for(&r, 200, "");
                            self.deliver(ok.into(), to);
                        }
                    }
                    SipMessage::Request(r) if r.method == Method::Bye => {
                        // The gateway accepts our BYEs (unless the test made it deaf).
                        if !t.retransmission && !self.byes_unanswered {
                            let ok = message::response_for(&r, 200, "");
                            self.deliver(ok.into(), to);
                        }
                        self.wire.push((to, r.into()));
                    }
                    m => self.wire.push((to, m)),
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn deliver(&mut self, m: SipMessage, from: SocketAddr) {
        let peer = Peer {
            addr: from,
            transport: transport::Transport::Udp,
            local: addr(LOCAL),
        };
        if let Err(e) = self
            .tl
            .on_message(m, peer, TxTransport::Unreliable, self.now)
        {
            panic!("transaction layer refused a test message: {e}");
        }
    }

    fn recv(&mut self, m: impl Into<SipMessage>, from: &str) {
        self.deliver(m.into(), addr(from));
        self.pump();
    }

    /// Moves virtual time forward by `d`, firing every timer on the way.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        let mut stuck = 0;
        loop {
            let next = match (self.tl.poll_timeout(), self.core.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > target {
                break;
            }
            // A timer that stays due after being handled would spin a real event loop.
            stuck = if next <= self.now { stuck + 1 } else { 0 };
            assert!(
                stuck < 100,
                "a timer due at {next:?} stays due once handled"
            );
            self.set_now(next.max(self.now));
            self.tl.handle_timeout(self.now);
            self.core.handle_timeout(self.now);
            self.pump();
        }
        self.set_now(target);
    }

    fn set_now(&mut self, t: Instant) {
        self.now = t;
        *self.wall.lock().expect("wall") = self.wall0 + (t - self.start);
    }

    fn secs(&mut self, s: f64) {
        self.advance(Duration::from_secs_f64(s));
    }

    fn branch(&mut self) -> String {
        self.seq += 1;
        format!("z9hG4bKtest{}", self.seq)
    }

    /// A caller from `from_user` dials `number` through the gateway; answered or not.
    fn dial(&mut self, number: &str, from_user: &str) -> Request {
        self.seq += 1;
        let n = self.seq;
        let inv = request(
            &format!(
                "INVITE sip:{number}@{LOCAL} SIP/2.0
Via: SIP/2.0/UDP {GW};branch=z9hG4bKcaller{n}
Max-Forwards: 70
From: <sip:{from_user}@{GW}>;tag=ctag{n}
To: <sip:{number}@{LOCAL}>
Call-ID: caller{n}@{GW}
CSeq: 1 INVITE
Contact: <sip:{from_user}@{GW}>
"
            ),
            &sdp("10.0.0.1", 4000 + 2 * u16::try_from(n).unwrap_or(0)),
        );
        self.recv(inv.clone(), GW);
        inv
    }

    /// The final response we sent to `req` (by Call-ID and CSeq method).
    fn final_to(&self, req: &Request) -> Option<Response> {
        let cid = call_id(&req.headers);
        self.wire.iter().rev().find_map(|(_, m)| match m {
            SipMessage::Response(r)
                if call_id(&r.headers) == cid
                    && r.status_code.code() >= 200
                    && cseq_method(&r.headers) == req.method.to_string() =>
            {
                Some(r.clone())
            }
            _ => None,
        })
    }

    /// A caller dials `number`, is answered and ACKs.
    fn caller(&mut self, number: &str, from_user: &str) -> CallerLeg {
        let invite = self.dial(number, from_user);
        let ok = self.final_to(&invite).expect("an answer");
        assert_eq!(ok.status_code.code(), 200, "caller answered");
        let leg = CallerLeg {
            invite,
            ok,
            cseq: 1,
        };
        let ack = self.in_dialog_from_caller(&leg, Method::Ack, 1);
        self.recv(ack, GW);
        leg
    }

    fn in_dialog_from_caller(&mut self, c: &CallerLeg, method: Method, cseq: u32) -> Request {
        let b = self.branch();
        request(
            &format!(
                "{method} sip:acd@{LOCAL} SIP/2.0
Via: SIP/2.0/UDP {GW};branch={b}
Max-Forwards: 70
From: {from}
To: {to}
Call-ID: {cid}
CSeq: {cseq} {method}
",
                from = from_of(&c.invite.headers),
                to = to_of(&c.ok.headers),
                cid = call_id(&c.invite.headers),
            ),
            "",
        )
    }

    fn hang_up_caller(&mut self, c: &mut CallerLeg) -> Request {
        c.cseq += 1;
        let bye = self.in_dialog_from_caller(c, Method::Bye, c.cseq);
        self.recv(bye.clone(), GW);
        bye
    }

    /// Requests we sent with `method` (to anyone), oldest first, retransmissions included.
    fn sent(&self, method: Method) -> Vec<(SocketAddr, Request)> {
        self.wire
            .iter()
            .filter_map(|(to, m)| match m {
                SipMessage::Request(r) if r.method == method => Some((*to, r.clone())),
                _ => None,
            })
            .collect()
    }

    /// The latest offer INVITE for `user` (`2001`).
    fn offer_to(&self, user: &str) -> Option<(SocketAddr, Request)> {
        self.sent(Method::Invite)
            .into_iter()
            .rev()
            .find(|(_, r)| user_of(r) == user)
    }

    /// Distinct offer INVITEs (by Call-ID) sent to `user`.
    fn offers_to(&self, user: &str) -> usize {
        let mut ids: Vec<String> = self
            .sent(Method::Invite)
            .into_iter()
            .filter(|(_, r)| user_of(r) == user)
            .map(|(_, r)| call_id(&r.headers))
            .collect();
        ids.dedup();
        ids.len()
    }

    /// The gateway answers our offer INVITE for the agent.
    fn agent_answers(&mut self, inv: &Request, code: u16, from: &str) -> Response {
        let mut r = message::response_with_tag(inv, code, "", "agenttag");
        if code == 200 {
            r.headers
                .push(Header::Contact(Contact::new(format!("<sip:2001@{GW}>"))));
            r = dialog::response_with_body(
                r,
                sdp("10.0.0.99", 6000).into_bytes(),
                "application/sdp",
            );
        }
        self.recv(r.clone(), from);
        r
    }

    /// The agent (through the gateway) hangs up a connected offer.
    fn agent_hangs_up(&mut self, inv: &Request) -> Request {
        let b = self.branch();
        let bye = request(
            &format!(
                "BYE sip:acd@{LOCAL} SIP/2.0
Via: SIP/2.0/UDP {GW};branch={b}
Max-Forwards: 70
From: {to};tag=agenttag
To: {from}
Call-ID: {cid}
CSeq: 1 BYE
",
                to = to_of(&inv.headers),
                from = from_of(&inv.headers),
                cid = call_id(&inv.headers),
            ),
            "",
        );
        self.recv(bye.clone(), GW);
        bye
    }

    /// queue_log lines with `event`, as written.
    fn log(&self, event: &str) -> Vec<QueueLogEvent> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                Output::QueueLog(e) if e.event == event => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn announcements(&self) -> Vec<(LegId, Vec<String>)> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                Output::Announce { leg, prompts } => Some((*leg, prompts.clone())),
                _ => None,
            })
            .collect()
    }

    /// A request we sent within the dialog of `call_id`.
    fn sent_in(&self, method: Method, call: &str) -> Vec<Request> {
        self.sent(method)
            .into_iter()
            .filter(|(_, r)| call_id(&r.headers) == call)
            .map(|(_, r)| r)
            .collect()
    }

    /// Offer, ring and answer by PJSIP/2001: the connected call.
    fn connected_call(&mut self) -> (CallerLeg, Request) {
        let c = self.caller("500", "1001");
        let (_, inv) = self.offer_to("2001").expect("offer to 2001");
        self.agent_answers(&inv, 180, GW);
        self.secs(1.0);
        self.agent_answers(&inv, 200, GW);
        assert_eq!(self.log("CONNECT").len(), 1, "connected");
        (c, inv)
    }
}

fn wall_secs(rig: &Rig, at: Duration) -> u64 {
    (rig.wall0 + at)
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("wall")
        .as_secs()
}

#[test]
fn caller_is_answered_queued_and_hears_music() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.secs(3.0);
    let inv = rig.dial("500", "1001");
    let ok = rig.final_to(&inv).expect("answer");
    assert_eq!(ok.status_code.code(), 200);
    let answer = SessionDescription::parse_bytes(&ok.body).expect("SDP answer");
    let leg = rig.core.media().open[0];
    assert_eq!(
        answer.rtp_endpoint(0),
        Some(SocketAddr::new(addr(LOCAL).ip(), 20000 + 2 * leg.0 as u16)),
        "our SDP names the relay leg"
    );
    assert_eq!(
        rig.core.media().remotes,
        [(leg, addr("10.0.0.1:4002"))],
        "the caller's RTP address is the leg's remote"
    );
    assert!(rig.outs.contains(&Output::Music {
        leg,
        codec: Codec::Pcmu
    }));
    let enter = rig.log("ENTERQUEUE");
    assert_eq!(enter.len(), 1);
    assert_eq!(enter[0].queue, "support");
    assert_eq!(enter[0].callid, "acd-test-1");
    assert_eq!(enter[0].data, ["", "1001", "1"]);
    assert_eq!(
        enter[0].time.as_secs(),
        wall_secs(&rig, Duration::from_secs(3)),
        "queue_log carries the wall clock"
    );
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-1"]);
}

#[test]
fn our_200_is_retransmitted_until_the_ack_and_a_caller_that_never_acks_is_hung_up() {
    let mut rig = Rig::support();
    rig.state("PJSIP/2001", DeviceState::Unavailable);
    rig.state("PJSIP/2002", DeviceState::Unavailable);
    // Caller A ACKs at once: no retransmission.
    let a = rig.caller("500", "1001");
    // Caller B never ACKs.
    let b = rig.dial("500", "1002");
    rig.secs(20.0);
    let oks = |rig: &Rig, inv: &Request| {
        let cid = call_id(&inv.headers);
        rig.wire
            .iter()
            .filter(|(_, m)| {
                matches!(m, SipMessage::Response(r) if r.status_code.code() == 200
                    && cseq_method(&r.headers) == "INVITE" && call_id(&r.headers) == cid)
            })
            .count()
    };
    assert_eq!(oks(&rig, &a.invite), 1, "an ACKed 200 is sent once");
    // T1 = 500 ms: 0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5 s.
    assert_eq!(oks(&rig, &b), 8, "retransmitted T1, 2T1, … capped at T2");
    assert!(rig.sent_in(Method::Bye, &call_id(&b.headers)).is_empty());
    rig.secs(12.5); // 64·T1 = 32 s
    assert_eq!(
        rig.sent_in(Method::Bye, &call_id(&b.headers)).len(),
        1,
        "no ACK in 64·T1: BYE"
    );
    let abandon = rig.log("ABANDON");
    assert_eq!(abandon.len(), 1);
    assert_eq!(abandon[0].callid, "acd-test-2");
    assert_eq!(rig.core.callers(), 1, "caller A still waits");
    assert!(rig
        .sent_in(Method::Bye, &call_id(&a.invite.headers))
        .is_empty());
}

#[test]
fn offer_answer_and_bridge() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let c = rig.caller("500", "1001");
    let (to, inv) = rig.offer_to("2001").expect("offer");
    assert_eq!(to, addr(GW), "the first configured gateway");
    assert_eq!(inv.uri.to_string(), format!("sip:2001@{GW}"));
    assert!(
        from_of(&inv.headers).starts_with(&format!("<sip:1001@{GW}>")),
        "the caller's identity: {}",
        from_of(&inv.headers)
    );
    let xo = x_offer(&inv);
    assert_eq!(xo.queue.as_deref(), Some("support"));
    assert!(!xo.ringinuse);
    assert_eq!(
        xo.deadline_ms,
        Some(1_800_000_000_000 + 2_000),
        "deadline = wall clock + offer_provisional_timeout"
    );
    let offer = SessionDescription::parse_bytes(&inv.body).expect("SDP offer");
    let codecs: Vec<String> = offer.media()[0]
        .codecs()
        .into_iter()
        .map(|c| c.name.to_ascii_uppercase())
        .collect();
    assert_eq!(
        codecs,
        ["PCMU", "TELEPHONE-EVENT"],
        "only the caller's codec"
    );
    rig.agent_answers(&inv, 100, GW);
    rig.agent_answers(&inv, 180, GW);
    rig.secs(4.0);
    assert!(rig.log("CONNECT").is_empty());
    rig.agent_answers(&inv, 200, GW);
    let acks = rig.sent_in(Method::Ack, &call_id(&inv.headers));
    assert_eq!(acks.len(), 1, "the agent's 200 is ACKed");
    assert!(to_of(&acks[0].headers).contains("tag=agenttag"));
    let connect = rig.log("CONNECT");
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0].agent, "PJSIP/2001");
    assert_eq!(connect[0].data[0], "4", "held 4 s (ringing included)");
    assert_eq!(connect[0].data[2], "4", "rang 4 s");
    let media = rig.core.media();
    let (caller_leg, agent_leg) = (media.open[0], media.open[1]);
    assert_eq!(media.bridged, [(caller_leg, agent_leg)]);
    assert_eq!(
        media.beside,
        [(agent_leg, caller_leg)],
        "the agent's leg opened on the caller's relay thread"
    );
    assert!(media.remotes.contains(&(agent_leg, addr("10.0.0.99:6000"))));
    assert!(rig.outs.contains(&Output::StopMedia { leg: caller_leg }));
    // A retransmitted 200 is ACKed again but connects nothing new.
    rig.agent_answers(&inv, 200, GW);
    assert_eq!(rig.sent_in(Method::Ack, &call_id(&inv.headers)).len(), 2);
    assert_eq!(rig.log("CONNECT").len(), 1);
    assert!(rig
        .sent_in(Method::Bye, &call_id(&c.invite.headers))
        .is_empty());
}

#[test]
fn no_answer_is_cancelled_at_the_ring_timeout_ringnoanswer_then_the_next_member() {
    let mut rig = Rig::support();
    let _c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer 2001");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(14.9);
    assert!(rig.sent(Method::Cancel).is_empty(), "still ringing");
    rig.secs(0.2);
    let cancels = rig.sent(Method::Cancel);
    assert_eq!(cancels.len(), 1, "CANCEL at the 15 s ring timeout");
    assert_eq!(call_id(&cancels[0].1.headers), call_id(&inv.headers));
    let rna = rig.log("RINGNOANSWER");
    assert_eq!(rna.len(), 1);
    assert_eq!(rna[0].agent, "PJSIP/2001");
    assert_eq!(rna[0].data, ["15000"]);
    rig.agent_answers(&inv, 487, GW);
    assert_eq!(rig.offers_to("2002"), 0, "the retry pause first");
    rig.secs(5.0);
    assert_eq!(rig.offers_to("2002"), 1, "next member after `retry`");
    assert_eq!(
        rig.log("RINGNOANSWER").len(),
        1,
        "the 487 logs nothing more"
    );
    assert!(rig.core.media().closed.contains(&rig.core.media().open[1]));
}

#[test]
fn a_200_crossing_our_cancel_is_acked_and_hung_up() {
    let mut rig = Rig::support();
    let c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(15.0);
    assert_eq!(rig.sent(Method::Cancel).len(), 1);
    // The agent picked up as our CANCEL flew: 200 to the CANCEL and 200 to the INVITE.
    rig.agent_answers(&inv, 200, GW);
    let cid = call_id(&inv.headers);
    assert_eq!(rig.sent_in(Method::Ack, &cid).len(), 1, "the 2xx is ACKed");
    assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1, "and hung up");
    assert!(rig.log("CONNECT").is_empty(), "never connected");
    assert!(rig.core.media().bridged.is_empty());
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-1"]);
    assert!(rig
        .sent_in(Method::Bye, &call_id(&c.invite.headers))
        .is_empty());
    rig.secs(5.0);
    assert_eq!(
        rig.offers_to("2002"),
        1,
        "the caller goes on to the next member"
    );
}

#[test]
fn a_cancel_from_the_caller_crossing_our_200_changes_nothing() {
    let mut rig = Rig::support();
    rig.state("PJSIP/2001", DeviceState::Unavailable);
    rig.state("PJSIP/2002", DeviceState::Unavailable);
    let inv = rig.dial("500", "1001");
    let cancel = request(
        &format!(
            "CANCEL sip:500@{LOCAL} SIP/2.0
Via: SIP/2.0/UDP {GW};branch=z9hG4bKcaller1
Max-Forwards: 70
From: {from}
To: <sip:500@{LOCAL}>
Call-ID: {cid}
CSeq: 1 CANCEL
",
            from = from_of(&inv.headers),
            cid = call_id(&inv.headers),
        ),
        "",
    );
    rig.recv(cancel.clone(), GW);
    let r = rig.final_to(&cancel).expect("CANCEL answered");
    assert_eq!(r.status_code.code(), 200);
    let ok = rig.final_to(&inv).expect("INVITE answer");
    assert_eq!(ok.status_code.code(), 200, "no 487 after our 200");
    assert!(rig.log("ABANDON").is_empty());
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-1"]);
}

#[test]
fn agent_hang_up_ends_both_legs_completeagent() {
    let mut rig = Rig::support();
    let (c, inv) = rig.connected_call();
    rig.secs(42.0);
    let bye = rig.agent_hangs_up(&inv);
    assert_eq!(rig.final_to(&bye).map(|r| r.status_code.code()), Some(200));
    let to_caller = rig.sent_in(Method::Bye, &call_id(&c.invite.headers));
    assert_eq!(to_caller.len(), 1, "BYE to the caller");
    assert!(to_of(&to_caller[0].headers).contains("tag=ctag"));
    let done = rig.log("COMPLETEAGENT");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].agent, "PJSIP/2001");
    assert_eq!(done[0].data, ["1", "42", "1"], "held 1 s, talked 42 s");
    assert!(rig.sent_in(Method::Bye, &call_id(&inv.headers)).is_empty());
    let m = rig.core.media();
    assert!(m.closed.contains(&m.open[0]) && m.closed.contains(&m.open[1]));
    assert_eq!((rig.core.callers(), rig.core.agent_calls()), (0, 0));
}

#[test]
fn caller_hang_up_while_bridged_completecaller() {
    let mut rig = Rig::support();
    let (mut c, inv) = rig.connected_call();
    rig.secs(10.0);
    let bye = rig.hang_up_caller(&mut c);
    assert_eq!(rig.final_to(&bye).map(|r| r.status_code.code()), Some(200));
    let to_agent = rig.sent_in(Method::Bye, &call_id(&inv.headers));
    assert_eq!(to_agent.len(), 1, "BYE to the agent");
    assert!(to_of(&to_agent[0].headers).contains("tag=agenttag"));
    let done = rig.log("COMPLETECALLER");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].data, ["1", "10", "1"]);
    assert!(rig.log("COMPLETEAGENT").is_empty());
    assert_eq!((rig.core.callers(), rig.core.agent_calls()), (0, 0));
}

#[test]
fn caller_hang_up_while_ringing_cancels_the_offer_abandon() {
    let mut rig = Rig::support();
    let mut c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(7.0);
    rig.hang_up_caller(&mut c);
    let cancels = rig.sent(Method::Cancel);
    assert_eq!(cancels.len(), 1, "the ringing offer is cancelled");
    assert_eq!(call_id(&cancels[0].1.headers), call_id(&inv.headers));
    assert_eq!(rig.log("RINGCANCELED").len(), 1);
    let ab = rig.log("ABANDON");
    assert_eq!(ab.len(), 1);
    assert_eq!(
        ab[0].data,
        ["1", "1", "7"],
        "position, original position, wait"
    );
    rig.agent_answers(&inv, 487, GW);
    assert_eq!(rig.core.agent_calls(), 0);
    assert!(rig.log("RINGNOANSWER").is_empty());
}

#[test]
fn refusals_486_480_404_are_ringnoanswer_and_the_next_member_is_tried_at_once() {
    // app_queue's wait_for_answer calls rna() on BUSY and CONGESTION: RINGNOANSWER.
    for code in [486u16, 480, 404] {
        let mut rig = Rig::support();
        let _c = rig.caller("500", "1001");
        let (_, inv) = rig.offer_to("2001").expect("offer");
        rig.agent_answers(&inv, 100, GW);
        rig.secs(0.3);
        rig.agent_answers(&inv, code, GW);
        let rna = rig.log("RINGNOANSWER");
        assert_eq!(rna.len(), 1, "{code}");
        assert_eq!(rna[0].agent, "PJSIP/2001");
        assert_eq!(rna[0].data, ["300"], "{code}");
        assert_eq!(rig.offers_to("2002"), 1, "{code}: next member at once");
        assert!(rig.sent(Method::Cancel).is_empty(), "{code}");
        assert_eq!(rig.core.agent_calls(), 1, "{code}: only the new offer");
    }
}

#[test]
fn position_announcements_on_schedule() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.announce_frequency = Some(30);
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::InUse); // nobody free: callers wait
    let _a = rig.caller("500", "1001");
    rig.secs(10.0);
    let _b = rig.caller("500", "1002");
    rig.secs(19.9);
    assert!(rig.announcements().is_empty(), "nothing before 30 s");
    rig.secs(0.2);
    let leg_a = rig.core.media().open[0];
    let leg_b = rig.core.media().open[1];
    assert_eq!(
        rig.announcements(),
        [(
            leg_a,
            vec!["queue-youarenext".to_string(), "queue-thankyou".into()]
        )]
    );
    rig.secs(10.0);
    assert_eq!(
        rig.announcements()[1],
        (
            leg_b,
            vec![
                "queue-thereare".to_string(),
                "digits/2".into(),
                "queue-callswaiting".into(),
                "queue-thankyou".into()
            ]
        )
    );
    rig.secs(20.0);
    assert_eq!(rig.announcements().len(), 3, "every 30 s: A again at 60 s");
    assert_eq!(rig.announcements()[2].0, leg_a);
    let events = rig
        .outs
        .iter()
        .filter(|o| matches!(o, Output::Event(NodeEvent::Announced { .. })))
        .count();
    assert_eq!(events, 3);
}

#[test]
fn hold_time_is_announced_when_the_queue_says_so() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.announce_frequency = Some(20);
    q.announce_holdtime = Some(true);
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    // A first call waits 130 s for the agent, so the queue's hold time becomes non-zero.
    rig.state("PJSIP/2001", DeviceState::InUse);
    let mut first = rig.caller("500", "1001");
    rig.secs(125.0);
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(5.0);
    rig.agent_answers(&inv, 200, GW);
    rig.hang_up_caller(&mut first);
    rig.state("PJSIP/2001", DeviceState::InUse);
    let before = rig.announcements().len();
    let _second = rig.caller("500", "1002");
    rig.secs(20.0);
    let (_, prompts) = rig.announcements()[before].clone();
    let hold = rig
        .core
        .engine()
        .queue_stats("support")
        .expect("stats")
        .holdtime_weighted_secs;
    assert!(hold > 0 && hold <= 60, "hold time {hold}");
    assert_eq!(
        prompts,
        [
            "queue-youarenext",
            "queue-holdtime",
            "queue-lessthan",
            "digits/2",
            "queue-minutes",
            "queue-thankyou"
        ]
    );
}

#[test]
fn hot_desking_login_and_logout() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::InUse);
    let login = rig.caller("*45500", "2003");
    let leg = rig.core.media().open[0];
    assert_eq!(
        rig.announcements(),
        [(leg, vec!["agent-loginok".to_string(), "beep".into()])]
    );
    let add = rig.log("ADDMEMBER");
    assert_eq!(add.len(), 1);
    assert_eq!(
        (add[0].queue.as_str(), add[0].agent.as_str()),
        ("support", "PJSIP/2003")
    );
    assert!(rig
        .core
        .engine()
        .member_interfaces("support")
        .contains(&"PJSIP/2003".to_string()));
    assert!(
        rig.log("ENTERQUEUE").is_empty(),
        "a feature code queues nobody"
    );
    // The confirmation ends: BYE half a second later.
    rig.secs(2.0);
    rig.core.announcement_done(leg, rig.now);
    rig.secs(0.4);
    let cid = call_id(&login.invite.headers);
    assert!(rig.sent_in(Method::Bye, &cid).is_empty());
    rig.secs(0.2);
    assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1);
    assert_eq!(rig.core.callers(), 0);
    // The new member takes callers.
    rig.state("PJSIP/2003", DeviceState::NotInUse);
    let _c = rig.caller("500", "1001");
    assert_eq!(rig.offers_to("2003"), 1);
    assert_eq!(rig.offers_to("2001"), 0);
    // Logout; a confirmation whose end is never reported still hangs up, at CONFIRM_MAX.
    let logout = rig.caller("*46500", "2003");
    assert_eq!(rig.log("REMOVEMEMBER").len(), 1);
    assert_eq!(
        rig.announcements().last().map(|(_, p)| p.clone()),
        Some(vec!["agent-loggedoff".to_string(), "beep".into()])
    );
    let cid = call_id(&logout.invite.headers);
    rig.secs(29.9);
    assert!(rig.sent_in(Method::Bye, &cid).is_empty());
    rig.secs(0.2);
    assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1);
    // Bad feature codes.
    let inv = rig.dial("*45999", "2003");
    assert_eq!(rig.final_to(&inv).map(|r| r.status_code.code()), Some(404));
    let inv = rig.dial("*46500", "2009");
    assert_eq!(
        rig.final_to(&inv).map(|r| r.status_code.code()),
        Some(403),
        "logging out a non-member"
    );
}

#[test]
fn wrap_up_holds_the_agent_after_a_call() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.wrapuptime = 10;
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let (mut c, _) = rig.connected_call();
    rig.secs(5.0);
    rig.hang_up_caller(&mut c);
    assert_eq!(rig.log("COMPLETECALLER").len(), 1);
    let _next = rig.caller("500", "1002");
    rig.secs(9.8);
    assert_eq!(rig.offers_to("2001"), 1, "in wrap-up: not offered");
    rig.secs(0.4);
    assert_eq!(rig.offers_to("2001"), 2, "offered when wrap-up ends");
}

#[test]
fn offer_without_a_provisional_response_is_abandoned_and_the_next_member_tried() {
    let mut rig = Rig::support();
    // The gateway answers keep-alives but never the offer (not even 100 Trying).
    let _c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    let cid = call_id(&inv.headers);
    rig.secs(1.9);
    assert_eq!(rig.offers_to("2002"), 0);
    let sent_before = rig.sent_in(Method::Invite, &cid).len();
    assert_eq!(sent_before, 3, "retransmitted at 0.5 and 1.5 s (timer A)");
    rig.secs(0.2);
    assert!(rig
        .outs
        .contains(&Output::Event(NodeEvent::OfferUnanswered {
            interface: "PJSIP/2001".into(),
            gateway: addr(GW),
        })));
    assert_eq!(rig.log("RINGNOANSWER").len(), 1);
    assert_eq!(rig.offers_to("2002"), 1, "next member at once");
    let (_, next) = rig.offer_to("2002").expect("offer 2002");
    rig.agent_answers(&next, 180, GW);
    rig.secs(10.0);
    assert_eq!(
        rig.sent_in(Method::Invite, &cid).len(),
        sent_before,
        "an abandoned INVITE is never retransmitted"
    );
    assert!(
        rig.sent(Method::Cancel).is_empty(),
        "no CANCEL without a 1xx"
    );
    assert!(
        rig.core.engine().is_reachable("PJSIP/2001"),
        "keep-alives answer"
    );
}

#[test]
fn a_late_2xx_to_an_abandoned_offer_is_acked_and_hung_up() {
    let mut rig = Rig::support();
    let _c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.secs(2.1); // no provisional: abandoned
    assert_eq!(rig.offers_to("2002"), 1);
    rig.agent_answers(&inv, 200, GW);
    let cid = call_id(&inv.headers);
    assert_eq!(rig.sent_in(Method::Ack, &cid).len(), 1);
    assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1);
    assert!(rig.log("CONNECT").is_empty());
}

#[test]
fn a_waiting_caller_abandons_with_position_and_wait() {
    let mut rig = Rig::support();
    rig.state("PJSIP/2001", DeviceState::InUse);
    rig.state("PJSIP/2002", DeviceState::Unavailable);
    let _a = rig.caller("500", "1001");
    let mut b = rig.caller("500", "1002");
    let _c = rig.caller("500", "1003");
    rig.secs(20.0);
    rig.hang_up_caller(&mut b);
    let ab = rig.log("ABANDON");
    assert_eq!(ab.len(), 1);
    assert_eq!(ab[0].callid, "acd-test-2");
    assert_eq!(ab[0].data, ["2", "2", "20"]);
    assert_eq!(
        ab[0].time.as_secs(),
        wall_secs(&rig, Duration::from_secs(20))
    );
    assert_eq!(
        rig.core.engine().waiting_callers("support"),
        ["acd-test-1", "acd-test-3"]
    );
    assert_eq!(
        rig.core
            .engine()
            .queue_stats("support")
            .map(|s| s.abandoned),
        Some(1)
    );
}

#[test]
fn refused_callers_unknown_peer_number_no_sdp_full_queue_no_ports() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.maxlen = 1;
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::InUse);
    let code = |rig: &Rig, inv: &Request| rig.final_to(inv).map(|r| r.status_code.code());
    // From an address that is no gateway.
    let inv = request(
        &format!(
            "INVITE sip:500@{LOCAL} SIP/2.0
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKstranger
Max-Forwards: 70
From: <sip:x@203.0.113.5>;tag=s
To: <sip:500@{LOCAL}>
Call-ID: stranger@203.0.113.5
CSeq: 1 INVITE
"
        ),
        &sdp("203.0.113.5", 4000),
    );
    rig.recv(inv.clone(), "203.0.113.5:5060");
    assert_eq!(code(&rig, &inv), Some(403));
    let inv = rig.dial("777", "1001");
    assert_eq!(code(&rig, &inv), Some(404), "no such queue number");
    let _first = rig.caller("500", "1001");
    let inv = rig.dial("500", "1002");
    assert_eq!(code(&rig, &inv), Some(486), "maxlen reached");
    let opened = rig.core.media().open.len();
    assert!(rig
        .core
        .media()
        .closed
        .contains(&rig.core.media().open[opened - 1]));
    rig.core.media.exhausted = true;
    let inv = rig.dial("500", "1003");
    assert_eq!(code(&rig, &inv), Some(503), "no media port");
    assert_eq!(rig.log("ENTERQUEUE").len(), 1);
    assert_eq!(rig.core.callers(), 1);
}

#[test]
fn agents_are_offered_through_the_gateway_that_publishes_their_device() {
    let mut rig = Rig::support();
    let eid: Eid = "02:00:00:00:00:20".parse().expect("eid");
    rig.core
        .fabric_mut()
        .publishers
        .insert("PJSIP/2001".into(), vec![(eid, DeviceState::NotInUse)]);
    rig.core.fabric_mut().members.push((eid, addr(GW2), true));
    rig.secs(1.0); // targets refreshed: GW2 watched
    let _c = rig.caller("500", "1001");
    let (to, inv) = rig.offer_to("2001").expect("offer");
    assert_eq!(to, addr(GW2));
    assert_eq!(inv.uri.to_string(), format!("sip:2001@{GW2}"));
    // GW2 stops answering keep-alives: 2001 becomes unreachable, its offer cancelled.
    rig.agent_answers(&inv, 180, GW2);
    rig.alive.retain(|a| *a != addr(GW2));
    rig.secs(2.0);
    assert!(rig.outs.contains(&Output::Event(NodeEvent::Reach {
        gateway: addr(GW2),
        reachable: false,
    })));
    assert!(!rig.core.engine().is_reachable("PJSIP/2001"));
    assert!(rig.core.engine().is_reachable("PJSIP/2002"));
    let cancels = rig.sent(Method::Cancel);
    assert!(!cancels.is_empty());
    assert!(cancels
        .iter()
        .all(|(to, r)| *to == addr(GW2) && call_id(&r.headers) == call_id(&inv.headers)));
    assert_eq!(rig.log("RINGCANCELED").len(), 1);
    assert_eq!(rig.offer_to("2002").map(|(to, _)| to), Some(addr(GW)));
}

#[test]
fn ring_timeouts_run_on_monotonic_time_whatever_the_wall_clock_does() {
    let mut rig = Rig::support();
    let _c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(5.0);
    // An NTP step: the wall clock jumps an hour back (and stays there).
    rig.wall0 -= Duration::from_secs(3600);
    rig.secs(9.9);
    assert!(rig.sent(Method::Cancel).is_empty(), "not early");
    rig.secs(0.2);
    assert_eq!(rig.sent(Method::Cancel).len(), 1, "at 15 s of ringing");
    let rna = rig.log("RINGNOANSWER");
    assert_eq!(rna[0].data, ["15000"]);
    assert_eq!(
        rna[0].time.as_secs(),
        wall_secs(&rig, rig.elapsed()),
        "stamped with the (stepped) wall clock"
    );
}

#[test]
fn timers_are_data_poll_timeout_names_the_next_one() {
    let mut cfg = config(vec![queue("support", &["PJSIP/2001", "PJSIP/2002"])]);
    cfg.reach.interval = Duration::from_secs(7);
    // Judged by silence: with a zero-delay link the bound must exceed the interval.
    cfg.reach.timeout = Duration::from_secs(8);
    let mut rig = Rig::new(cfg);
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    rig.secs(0.0);
    let t0 = rig.now;
    let due = rig.core.poll_timeout().expect("timeout");
    assert_eq!(
        due,
        t0 + TARGETS_EVERY,
        "the next target refresh, not a polling tick"
    );
    rig.secs(0.35);
    let _c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(14.75);
    // Ringing since 0.35 s: the engine's ring timeout (15.35 s) is the next timer, before the
    // target refresh at 16 s and the keep-alive at 21 s.
    assert_eq!(
        rig.core.poll_timeout(),
        Some(t0 + Duration::from_millis(15_350))
    );
    rig.advance(Duration::from_millis(249));
    assert!(rig.sent(Method::Cancel).is_empty());
    rig.advance(Duration::from_millis(2));
    assert_eq!(
        rig.sent(Method::Cancel).len(),
        1,
        "CANCEL at 15.35 s exactly"
    );
}

#[test]
fn a_cancelled_offer_whose_final_response_never_comes_is_forgotten_after_64_t1() {
    let mut rig = Rig::support();
    let mut c = rig.caller("500", "1001");
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 180, GW);
    rig.secs(3.0);
    rig.hang_up_caller(&mut c);
    assert_eq!(rig.sent(Method::Cancel).len(), 1);
    // The gateway answers neither the CANCEL nor the INVITE.
    rig.secs(31.9);
    assert_eq!(rig.core.agent_calls(), 1, "still waiting for the 487");
    let leg = rig.core.media().open[1];
    assert!(!rig.core.media().closed.contains(&leg));
    rig.secs(0.2);
    assert_eq!(rig.core.agent_calls(), 0, "forgotten at 64·T1 = 32 s");
    assert!(
        rig.core.media().closed.contains(&leg),
        "its relay leg closed"
    );
    assert!(
        rig.tl.is_empty()
            || rig
                .tl
                .state(&TransactionKey::client(
                    &hval(&inv.headers, |h| match h {
                        Header::Via(v) => v.value().split("branch=").nth(1).map(|b| b
                            .split(';')
                            .next()
                            .unwrap_or(b)
                            .to_owned()),
                        _ => None,
                    }),
                    Method::Invite,
                ))
                .is_none(),
        "its INVITE transaction is gone"
    );
}

#[test]
fn a_caller_reinvite_keeps_our_media_and_unknown_dialogs_get_481() {
    let mut rig = Rig::support();
    rig.state("PJSIP/2001", DeviceState::InUse);
    rig.state("PJSIP/2002", DeviceState::InUse);
    let c = rig.caller("500", "1001");
    let mut reinvite = rig.in_dialog_from_caller(&c, Method::Invite, 2);
    reinvite = dialog::with_body(
        reinvite,
        sdp("10.0.0.1", 4100).into_bytes(),
        "application/sdp",
    );
    rig.recv(reinvite.clone(), GW);
    let ok = rig.final_to(&reinvite).expect("re-INVITE answered");
    assert_eq!(ok.status_code.code(), 200);
    assert_eq!(ok.body, c.ok.body, "the same SDP: we stay where we are");
    assert_eq!(rig.core.engine().waiting_callers("support"), ["acd-test-1"]);
    // A BYE for a dialog we do not know.
    let stray = request(
        &format!(
            "BYE sip:acd@{LOCAL} SIP/2.0
Via: SIP/2.0/UDP {GW};branch=z9hG4bKstray
Max-Forwards: 70
From: <sip:9@{GW}>;tag=x
To: <sip:acd@{LOCAL}>;tag=nosuch
Call-ID: nosuch@{GW}
CSeq: 5 BYE
"
        ),
        "",
    );
    rig.recv(stray.clone(), GW);
    assert_eq!(
        rig.final_to(&stray).map(|r| r.status_code.code()),
        Some(481)
    );
    assert_eq!(rig.core.callers(), 1);
    assert!(rig.log("ABANDON").is_empty());
}

/// The latest offer INVITE's Call-ID and the offer, after `rig` gave it up (no provisional
/// response within `offer_provisional_timeout`, 2 s here).
fn abandoned_offer(rig: &mut Rig) -> (String, Request) {
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.secs(2.1);
    assert!(rig
        .outs
        .contains(&Output::Event(NodeEvent::OfferUnanswered {
            interface: "PJSIP/2001".into(),
            gateway: addr(GW),
        })));
    (call_id(&inv.headers), inv)
}

/// One offer (to 2001, 2002 busy) given up, then its caller hung up: nothing else runs.
fn lone_abandoned_offer() -> (Rig, String, Request) {
    let mut rig = Rig::support();
    rig.state("PJSIP/2002", DeviceState::InUse);
    let mut c = rig.caller("500", "1001");
    let (cid, inv) = abandoned_offer(&mut rig);
    rig.hang_up_caller(&mut c);
    assert_eq!(rig.offers_to("2001"), 1);
    (rig, cid, inv)
}

#[test]
fn a_late_2xx_after_the_abandoned_invite_transaction_ended_is_acked_and_byed_once() {
    let (mut rig, cid, inv) = lone_abandoned_offer();
    assert_eq!(
        rig.core.abandoned_offers(),
        (0, 0),
        "its transaction still runs"
    );
    // Timer B (64·T1 = 32 s from the INVITE) ends the transaction: the offer is remembered.
    rig.secs(31.0);
    assert_eq!(rig.core.agent_calls(), 0, "the offer is gone");
    assert_eq!(rig.core.abandoned_offers(), (1, 0), "but remembered");
    // After a partition heals, the gateway's 200 arrives (a stray response now).
    rig.agent_answers(&inv, 200, GW);
    let acks = rig.sent_in(Method::Ack, &cid);
    assert_eq!(acks.len(), 1, "the late 2xx is ACKed");
    assert!(to_of(&acks[0].headers).contains("tag=agenttag"));
    let byes = rig.sent_in(Method::Bye, &cid);
    assert_eq!(byes.len(), 1, "and its dialog ended");
    assert!(to_of(&byes[0].headers).contains("tag=agenttag"));
    assert_eq!(rig.sent(Method::Bye)[0].0, addr(GW), "towards the gateway");
    // Its retransmission is ACKed again, never BYEd twice.
    rig.secs(1.0);
    rig.agent_answers(&inv, 200, GW);
    assert_eq!(rig.sent_in(Method::Ack, &cid).len(), 2);
    assert_eq!(rig.sent_in(Method::Bye, &cid).len(), 1);
    assert!(
        rig.log("CONNECT").is_empty(),
        "the caller is connected to no one"
    );
}

#[test]
fn a_late_2xx_after_the_memory_expired_or_to_an_unknown_call_is_ignored() {
    let (mut rig, cid, inv) = lone_abandoned_offer();
    rig.secs(31.0);
    assert_eq!(rig.core.abandoned_offers(), (1, 0));
    // A 2xx for some other call: not ours to end.
    let mut other = inv.clone();
    other.headers.retain(|h| !matches!(h, Header::CallId(_)));
    other
        .headers
        .push(Header::CallId("someone-else@192.0.2.10".into()));
    rig.agent_answers(&other, 200, GW);
    assert!(rig.sent(Method::Ack).is_empty());
    // Remembered for 64 s after the transaction ended, then forgotten.
    rig.secs(63.0);
    assert_eq!(rig.core.abandoned_offers(), (1, 0));
    rig.secs(1.5);
    rig.agent_answers(&inv, 200, GW);
    assert!(
        rig.sent_in(Method::Ack, &cid).is_empty(),
        "forgotten after 64 s"
    );
    assert!(rig.sent_in(Method::Bye, &cid).is_empty());
}

#[test]
fn the_abandoned_offer_memory_is_bounded_and_counts_what_it_drops() {
    let mut mem = late::Abandoned::default();
    let inv = request(
        &format!(
            "INVITE sip:2001@{GW} SIP/2.0
Via: SIP/2.0/UDP {LOCAL};branch=z9hG4bKx
Max-Forwards: 70
From: <sip:acd@{LOCAL}>;tag=a
To: <sip:2001@{GW}>
Call-ID: c@x
CSeq: 1 INVITE
"
        ),
        "",
    );
    let peer = Peer {
        addr: addr(GW),
        transport: transport::Transport::Udp,
        local: addr(LOCAL),
    };
    let t0 = Instant::now();
    for i in 0..(MAX_ABANDONED + 44) {
        mem.remember(
            t0 + Duration::from_millis(i as u64),
            inv.clone(),
            peer.clone(),
        );
    }
    assert_eq!((mem.len(), mem.dropped()), (MAX_ABANDONED, 44));
    // All expire KEEP after they were remembered.
    mem.remember(t0 + late::KEEP + Duration::from_secs(1), inv, peer);
    assert_eq!(mem.len(), 1);
}

#[test]
fn a_late_180_to_an_abandoned_offer_is_cancelled_and_its_487_ends_it() {
    let mut rig = Rig::support();
    let _c = rig.caller("500", "1001");
    let (cid, inv) = abandoned_offer(&mut rig);
    assert!(
        rig.sent(Method::Cancel).is_empty(),
        "no CANCEL before a 1xx (§9.1)"
    );
    assert_eq!(
        rig.offers_to("2002"),
        1,
        "the next member is offered at once"
    );
    // The offer did reach the phone: it rings after the ACD gave it up.
    rig.agent_answers(&inv, 180, GW);
    let cancels = rig.sent(Method::Cancel);
    assert_eq!(cancels.len(), 1, "the late 1xx is CANCELled at once");
    assert_eq!(cancels[0].0, addr(GW));
    assert_eq!(call_id(&cancels[0].1.headers), cid);
    // A second 180 does not CANCEL again.
    rig.agent_answers(&inv, 180, GW);
    assert_eq!(rig.sent(Method::Cancel).len(), 1);
    // The phone stops ringing: 487 to the INVITE (ACKed by the transaction layer).
    rig.agent_answers(&inv, 487, GW);
    assert_eq!(rig.sent_in(Method::Ack, &cid).len(), 1);
    assert_eq!(rig.core.agent_calls(), 1, "only the offer to 2002 is left");
    assert!(rig.sent_in(Method::Bye, &cid).is_empty());
    assert_eq!(
        rig.log("RINGNOANSWER").len(),
        1,
        "the abandon was the only outcome"
    );
}

#[test]
fn members_behind_an_unreachable_gateway_are_skipped_until_it_answers_again() {
    let mut rig = Rig::support();
    let eid: Eid = "02:00:00:00:00:20".parse().expect("eid");
    rig.core
        .fabric_mut()
        .publishers
        .insert("PJSIP/2001".into(), vec![(eid, DeviceState::NotInUse)]);
    rig.core.fabric_mut().members.push((eid, addr(GW2), true));
    rig.secs(1.0); // targets refreshed: GW2 watched
    rig.alive.retain(|a| *a != addr(GW2));
    let cut = rig.now;
    rig.secs(0.65);
    assert!(
        rig.core.engine().is_reachable("PJSIP/2001"),
        "not before 700 ms of silence"
    );
    rig.secs(0.1);
    assert!(
        !rig.core.engine().is_reachable("PJSIP/2001"),
        "700 ms of silence"
    );
    assert!(rig.core.engine().is_reachable("PJSIP/2002"));
    // Callers arriving now are offered to 2002 only, however often 2001 would be next.
    for n in 0..3 {
        let mut c = rig.caller("500", &format!("100{n}"));
        rig.secs(0.5);
        hang_up(&mut rig, &mut c);
    }
    assert_eq!(
        rig.offers_to("2001"),
        0,
        "never offered through the silent gateway"
    );
    assert_eq!(rig.offers_to("2002"), 3);
    assert!(
        rig.probed
            .iter()
            .any(|(t, a)| *t > cut + Duration::from_secs(2) && *a == addr(GW2)),
        "still probed"
    );
    // It answers again: reachable at the first answer.
    rig.alive.push(addr(GW2));
    rig.secs(0.15);
    assert!(rig.core.engine().is_reachable("PJSIP/2001"));
    let _c = rig.caller("500", "1009");
    rig.secs(0.1);
    assert_eq!(rig.offer_to("2001").map(|(to, _)| to), Some(addr(GW2)));
}

/// The caller hangs up (whatever the offer's state).
fn hang_up(rig: &mut Rig, c: &mut CallerLeg) {
    rig.hang_up_caller(c);
}

#[test]
fn a_member_that_comes_up_is_probed_at_once_not_at_the_next_refresh() {
    let mut rig = Rig::support();
    rig.secs(0.3); // just after a target refresh (at 0 s; the next at 1 s)
    let eid: Eid = "02:00:00:00:00:20".parse().expect("eid");
    rig.core.fabric_mut().members.push((eid, addr(GW2), true));
    let at = rig.now;
    rig.core.peer_up(at);
    rig.pump();
    assert_eq!(
        rig.probed
            .iter()
            .find(|(_, a)| *a == addr(GW2))
            .map(|(t, _)| *t),
        Some(at),
        "the first keep-alive goes out with the member's first heartbeat"
    );
}

mod scenarios;
mod shutdown;

/// The caller presses 1: hung up, its place kept; called back when an agent answered; bridged.
#[test]
fn callback_keeps_the_place_calls_back_once_the_agent_answered_and_bridges() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::Unavailable);
    let c = rig.caller("500", "1001");
    let first = rig.log("ENTERQUEUE")[0].callid.clone();
    let caller_leg = rig.core.media().open[0];
    let now = rig.now;
    rig.core.dtmf(caller_leg, '5', now);
    rig.pump();
    assert!(rig.log("CALLBACKREQ").is_empty(), "only the callback key");
    rig.core.dtmf(caller_leg, '1', now);
    rig.pump();
    let req = rig.log("CALLBACKREQ");
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].callid, first);
    assert_eq!(req[0].data, ["1", "1001"], "global position, number");
    assert_eq!(
        rig.sent_in(Method::Bye, &call_id(&c.invite.headers)).len(),
        1
    );
    assert!(rig.core.media().closed.contains(&caller_leg));
    assert!(rig.log("ABANDON").is_empty(), "the place is kept");
    // A second caller queues behind the absent one.
    let _c2 = rig.caller("500", "1002");
    assert_eq!(rig.core.engine().waiting_callers("support").len(), 2);
    assert_eq!(
        rig.core.engine().global_position("support", &first),
        Some(1)
    );

    // The agent comes: offered the called-back caller first; it answers, hears music, and
    // the caller is called back through its gateway.
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 200, GW);
    let connect = rig.log("CONNECT");
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0].callid, first);
    let agent_leg = rig.core.media().open[2];
    assert!(rig
        .outs
        .iter()
        .any(|o| matches!(o, Output::Music { leg, .. } if *leg == agent_leg)));
    let (to, back) = rig.offer_to("1001").expect("the call back");
    assert_eq!(to, addr(GW), "through the gateway the call came from");
    assert!(
        rig.core.media().bridged.is_empty(),
        "nothing bridged before it answers"
    );
    rig.agent_answers(&back, 200, GW);
    assert_eq!(rig.sent_in(Method::Ack, &call_id(&back.headers)).len(), 1);
    let back_leg = rig.core.media().open[3];
    assert_eq!(rig.core.media().bridged, [(back_leg, agent_leg)]);
    assert!(
        rig.core.media().beside.contains(&(back_leg, agent_leg)),
        "the call-back leg opened on the agent's relay thread"
    );
    assert!(rig.outs.contains(&Output::StopMedia { leg: agent_leg }));
    let cb = rig.log("CALLBACK");
    assert_eq!(cb.len(), 1);
    assert_eq!(cb[0].data, ["1001", "ANSWER"]);
    // The agent hangs up: the called-back caller gets the BYE, the next caller is offered.
    rig.agent_hangs_up(&inv);
    assert_eq!(rig.sent_in(Method::Bye, &call_id(&back.headers)).len(), 1);
    assert_eq!(rig.log("COMPLETEAGENT").len(), 1);
    rig.state("PJSIP/2001", DeviceState::InUse);
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    assert_eq!(rig.offers_to("2001"), 2, "the second caller's turn");
}

/// A queue's `callback_key` replaces the default 1.
#[test]
fn the_queue_callback_key_replaces_the_default() {
    let mut q = queue("support", &["PJSIP/2001"]);
    q.callback_key = Some('#');
    let mut rig = Rig::new(config(vec![q]));
    rig.state("PJSIP/2001", DeviceState::Unavailable);
    let _c = rig.caller("500", "1001");
    let leg = rig.core.media().open[0];
    let now = rig.now;
    rig.core.dtmf(leg, '1', now);
    rig.pump();
    assert!(
        rig.log("CALLBACKREQ").is_empty(),
        "1 is not this queue's key"
    );
    rig.core.dtmf(leg, '#', now);
    rig.pump();
    assert_eq!(rig.log("CALLBACKREQ").len(), 1);
}

/// A call back refused: the agent is released, the caller's place is gone.
#[test]
fn a_refused_call_back_releases_the_agent() {
    let mut rig = Rig::new(config(vec![queue("support", &["PJSIP/2001"])]));
    rig.state("PJSIP/2001", DeviceState::Unavailable);
    let _c = rig.caller("500", "1001");
    let leg = rig.core.media().open[0];
    let now = rig.now;
    rig.core.dtmf(leg, '1', now);
    rig.pump();
    rig.state("PJSIP/2001", DeviceState::NotInUse);
    let (_, inv) = rig.offer_to("2001").expect("offer");
    rig.agent_answers(&inv, 200, GW);
    let (_, back) = rig.offer_to("1001").expect("the call back");
    rig.agent_answers(&back, 486, GW);
    assert_eq!(rig.log("CALLBACK")[0].data, ["1001", "486"]);
    assert_eq!(
        rig.sent_in(Method::Bye, &call_id(&inv.headers)).len(),
        1,
        "agent released"
    );
    assert_eq!(rig.log("COMPLETECALLER").len(), 1);
    assert!(rig.core.engine().waiting_callers("support").is_empty());
}
