//! The voicemail user agent: its own SIP listener (the gateway diverts calls to it as to a
//! trunk), a transaction layer, and one task per call running a [`Menu`] on a relay leg:
//! prompts played with the media engine's player, messages and greetings recorded with its
//! recorder, DTMF from RFC 4733 telephone-events on the leg ([`DtmfDetector`]) or SIP INFO.
//!
//! Request-URI users: `vm-<mailbox>` leaves a message, `vmmain-<mailbox>` is the owner's
//! retrieval (the gateway sends its feature code there, for the calling device's mailbox).

use super::mail::{self, Notice};
use super::menu::{self, Command, Menu, Prompt, Recording};
use super::store::MailboxStore;
use super::{MailboxConfig, VoicemailConfig, VoicemailError, VoicemailEvent};
use crate::audio::{self, Codec, PlayEnd, PlayerConfig, RtpPlayer, RtpRecorder, RtpSink};
use crate::media::dtmf::{self, DtmfDetector};
use crate::media::{Leg, MediaRelay, RelayConfig};
use crate::sdp::SessionDescription;
use crate::sip::builder::Local;
use crate::sip::dialog::{self, Dialog};
use crate::sip::message::{self, response_with_tag, Method, Request};
use crate::sip::transaction::parse::{self as tparse, Field};
use crate::sip::transaction::{self as tx, TransactionLayer};
use crate::sip::ua::{UasEvent, UasInvite};
use crate::transport::{self, earliest, sleep_until, Peer, Transports};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rsip::headers::UntypedHeader as _;
use statebus::{Bus, Mwi};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

/// Most calls in voicemail at once (more get 486).
pub const MAX_SESSIONS: usize = 256;

/// The shipped prompts (`gateway/prompts/en`, `scripts/make-prompts.sh voicemail`), compiled in.
macro_rules! prompts {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../../prompts/en/", $name, ".wav")) as &[u8])),*]
    };
}
const PROMPTS: &[(&str, &[u8])] = prompts!(
    "vm-intro",
    "vm-password",
    "vm-incorrect",
    "vm-youhave",
    "vm-INBOX",
    "vm-Old",
    "vm-and",
    "vm-messages",
    "vm-message",
    "vm-msgopts",
    "vm-mainmenu",
    "vm-deleted",
    "vm-saved",
    "vm-nomore",
    "vm-rec-greeting",
    "vm-greeting-saved",
    "vm-goodbye",
    "digits/0",
    "digits/1",
    "digits/2",
    "digits/3",
    "digits/4",
    "digits/5",
    "digits/6",
    "digits/7",
    "digits/8",
    "digits/9",
    "digits/10",
    "digits/11",
    "digits/12",
    "digits/13",
    "digits/14",
    "digits/15",
    "digits/16",
    "digits/17",
    "digits/18",
    "digits/19",
    "digits/20",
    "digits/30",
    "digits/40",
    "digits/50",
    "digits/60",
    "digits/70",
    "digits/80",
    "digits/90",
    "digits/hundred",
);

/// What every call task shares.
struct Shared {
    store: MailboxStore,
    relay: MediaRelay,
    prompts: HashMap<&'static str, Vec<i16>>,
    boxes: HashMap<String, MailboxConfig>,
    bus: Arc<dyn Bus>,
    cfg: VoicemailConfig,
    events: broadcast::Sender<VoicemailEvent>,
}

impl Shared {
    /// Publishes the mailbox's counts on the bus (Asterisk's new/old; urgent stays local).
    async fn publish(&self, mailbox: &str) {
        match self.store.counts(mailbox).await {
            Ok((new, old)) => {
                self.bus
                    .publish_mwi(Mwi::new(mailbox, self.store.context(), new, old));
                let _ = self.events.send(VoicemailEvent::Mwi {
                    mailbox: mailbox.to_owned(),
                    new,
                    old,
                });
            }
            Err(e) => warn!(mailbox, error = %e, "mailbox counts not read: MWI not published"),
        }
    }
}

/// A running voicemail user agent.
pub struct Voicemail {
    /// Its SIP listener (UDP).
    pub local: std::net::SocketAddr,
    /// Deposits, e-mails, MWI publishes.
    pub events: broadcast::Sender<VoicemailEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Voicemail {
    /// Opens the store, binds the listener, publishes every mailbox's counts and serves.
    pub async fn start(
        cfg: VoicemailConfig,
        bus: Arc<dyn Bus>,
    ) -> Result<Voicemail, VoicemailError> {
        let store =
            MailboxStore::open(&cfg.database, &cfg.dir, &cfg.context, cfg.max_messages).await?;
        let (transports, events, local) = Transports::bind_udp(cfg.listen).await?;
        let relay = MediaRelay::new(RelayConfig::new(
            cfg.rtp_ip,
            cfg.rtp_ip,
            cfg.rtp_ports.0,
            cfg.rtp_ports.1,
        ))?;
        let mut prompts = HashMap::new();
        for (name, bytes) in PROMPTS {
            prompts.insert(*name, audio::wav::decode_wav(bytes, name)?);
        }
        let boxes = cfg
            .mailboxes
            .iter()
            .map(|b| (b.mailbox.clone(), b.clone()))
            .collect();
        let (ev_tx, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            store,
            relay,
            prompts,
            boxes,
            bus,
            events: ev_tx.clone(),
            cfg,
        });
        // Restart truth: the counts as stored now.
        for b in shared.cfg.mailboxes.iter() {
            shared.publish(&b.mailbox).await;
        }
        let tl = TransactionLayer::new(tx::Config {
            t1: shared.cfg.t1,
            ..tx::Config::default()
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let ua = Ua {
            tl,
            transports,
            local,
            sessions: HashMap::new(),
            shared,
            done_tx,
            done_rx,
            rng: StdRng::from_os_rng(),
        };
        let task = tokio::spawn(ua.run(events));
        Ok(Voicemail {
            local,
            events: ev_tx,
            task,
        })
    }

    /// Stop serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Voicemail {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Input to a call's task from the SIP side.
#[derive(Debug)]
enum Input {
    /// BYE received.
    Hangup,
    /// A key by SIP INFO.
    Digit(char),
}

/// Our 2xx, retransmitted at T1 doubling (to T2) until its ACK (RFC 3261 §13.3.1.4),
/// through server transaction `key`.
struct Unacked {
    key: tx::TransactionKey,
    usage: UasInvite,
}

struct Session {
    dialog: Dialog,
    ok: Option<Unacked>,
    peer: Peer,
    input: mpsc::UnboundedSender<Input>,
    /// Our answer, for refreshes.
    sdp: String,
}

struct Ua {
    tl: TransactionLayer<Peer>,
    transports: Transports,
    local: std::net::SocketAddr,
    /// By Call-ID.
    sessions: HashMap<String, Session>,
    shared: Arc<Shared>,
    done_tx: mpsc::UnboundedSender<String>,
    /// Calls whose media script ended (their Call-IDs), to hang up.
    done_rx: mpsc::UnboundedReceiver<String>,
    /// Tags and branches (`sip_core::builder`).
    rng: StdRng,
}

/// Voicemail's SIP side on the one event loop (`sipnet::drive`): its own timers are the
/// unacknowledged 2xx, its own input the calls whose script ended.
impl transport::UserAgent for Ua {
    /// The Call-ID of a call to hang up.
    type Input = String;

    fn sip(&mut self) -> (&Transports, &mut TransactionLayer<Peer>) {
        (&self.transports, &mut self.tl)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.ok_due()
    }

    fn on_timer(&mut self, now: Instant) {
        self.retransmit(now);
    }

    async fn input(&mut self) -> Option<String> {
        self.done_rx.recv().await
    }

    fn on_input(&mut self, call_id: String) {
        self.bye(&call_id);
    }

    fn on_event(&mut self, ev: tx::Event<Peer>, _now: Instant) {
        Ua::on_event(self, ev);
    }
}

impl Ua {
    /// Where our requests leave from (`vm` identifiers).
    fn builder_local(&self) -> Local {
        Local::udp(self.local, "vm")
    }

    async fn run(mut self, mut events: mpsc::Receiver<transport::TransportEvent>) {
        transport::drive(&mut self, &mut events).await
    }

    fn ok_due(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.ok.as_ref().and_then(|o| o.usage.poll_timeout()))
            .min()
    }

    /// Resends unacknowledged 2xx; a call whose ACK never came is hung up (BYE).
    fn retransmit(&mut self, now: Instant) {
        let mut resend = Vec::new();
        let mut dead = Vec::new();
        for (call_id, s) in self.sessions.iter_mut() {
            let Some(o) = s.ok.as_mut() else {
                continue;
            };
            match o.usage.handle_timeout(now) {
                Some(UasEvent::AckTimeout) => {
                    s.ok = None;
                    dead.push(call_id.clone());
                }
                Some(UasEvent::Retransmit(r)) => resend.push((o.key.clone(), r)),
                None => {}
            }
        }
        for (key, r) in resend {
            self.respond(&key, r);
        }
        for call_id in dead {
            warn!(%call_id, "voicemail: no ACK for our 2xx, hanging up");
            if let Some(s) = self.sessions.get(&call_id) {
                let _ = s.input.send(Input::Hangup);
            }
        }
    }

    fn respond(&mut self, key: &tx::TransactionKey, r: message::Response) {
        if let Err(e) = self.tl.send_response(key, r, Instant::now()) {
            debug!(error = %e, "voicemail response not sent");
        }
    }

    fn on_event(&mut self, ev: tx::Event<Peer>) {
        if let tx::Event::Ack { request, .. } = &ev {
            let call_id = tparse::value(&request.headers, Field::CallId).unwrap_or_default();
            if let Some(s) = self.sessions.get_mut(call_id) {
                s.ok = None;
            }
            return;
        }
        let tx::Event::Request {
            key,
            request,
            source,
            ..
        } = ev
        else {
            return;
        };
        let call_id = tparse::value(&request.headers, Field::CallId)
            .unwrap_or_default()
            .to_owned();
        let to_tag = tparse::field_tag(&request.headers, Field::To)
            .ok()
            .flatten()
            .is_some();
        match request.method {
            Method::Invite if !to_tag => self.on_invite(&key, request, source, call_id),
            Method::Invite | Method::Update => {
                // A refresh (session timers): the same answer again.
                let r = match self.sessions.get(&call_id) {
                    Some(s) => dialog::response_with_body(
                        response_with_tag(&request, 200, "", &s.dialog.local_tag),
                        s.sdp.clone().into_bytes(),
                        "application/sdp",
                    ),
                    None => message::response_for(&request, 481, ""),
                };
                self.respond(&key, r);
            }
            Method::Bye => {
                let code = match self.sessions.remove(&call_id) {
                    Some(s) => {
                        let _ = s.input.send(Input::Hangup);
                        200
                    }
                    None => 481,
                };
                self.respond(&key, message::response_for(&request, code, ""));
            }
            Method::Info => {
                let code = match self.sessions.get(&call_id) {
                    Some(s) => {
                        let ct = dialog::content_type(&request.headers).unwrap_or_default();
                        if let Some(k) = dtmf::parse_info(&ct, &request.body) {
                            let _ = s.input.send(Input::Digit(k));
                        }
                        200
                    }
                    None => 481,
                };
                self.respond(&key, message::response_for(&request, code, ""));
            }
            Method::Options | Method::Cancel => {
                self.respond(&key, message::response_for(&request, 200, ""));
            }
            Method::Ack => {}
            _ => self.respond(&key, message::response_for(&request, 501, "")),
        }
    }

    fn on_invite(&mut self, key: &tx::TransactionKey, req: Request, source: Peer, call_id: String) {
        let user = req
            .uri
            .auth
            .as_ref()
            .map(|a| a.user.clone())
            .unwrap_or_default();
        let (retrieval, mailbox) = if let Some(m) = user.strip_prefix("vmmain-") {
            (true, m.to_owned())
        } else if let Some(m) = user.strip_prefix("vm-") {
            (false, m.to_owned())
        } else {
            return self.respond(key, message::response_for(&req, 404, ""));
        };
        let Some(mbox) = self.shared.boxes.get(&mailbox).cloned() else {
            return self.respond(key, message::response_for(&req, 404, ""));
        };
        if self.sessions.len() >= MAX_SESSIONS || self.sessions.contains_key(&call_id) {
            return self.respond(key, message::response_for(&req, 486, ""));
        }
        let Ok(offer) = SessionDescription::parse_bytes(&req.body) else {
            return self.respond(key, message::response_for(&req, 488, ""));
        };
        let leg = match self.shared.relay.leg_now() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "voicemail: no RTP ports");
                return self.respond(key, message::response_for(&req, 503, ""));
            }
        };
        let port = leg.local_rtp();
        let Some(answer) = crate::sdp::answer(
            &offer,
            port.ip(),
            &[port.port()],
            &["PCMU", "PCMA", "telephone-event"],
            ("callfabric", rand::random::<u32>().into(), 1),
        ) else {
            leg.close();
            return self.respond(key, message::response_for(&req, 488, ""));
        };
        let codecs = answer
            .media()
            .first()
            .map(|m| m.codecs())
            .unwrap_or_default();
        let codec = codecs
            .iter()
            .find_map(|c| Codec::from_payload_type(c.payload_type))
            .unwrap_or(Codec::Pcmu);
        let dtmf_pt = codecs
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
            .map_or(dtmf::DEFAULT_PAYLOAD_TYPE, |c| c.payload_type);
        if let Some(rtp) = offer.rtp_endpoint(0) {
            leg.set_remote(rtp, offer.rtcp_endpoint(0));
        }
        let tag = self.builder_local().tag(&mut self.rng);
        let contact = format!("<sip:voicemail@{}>", self.local);
        let Ok(dialog) = Dialog::uas(&req, &tag, &contact) else {
            leg.close();
            return self.respond(key, message::response_for(&req, 400, ""));
        };
        let sdp = answer.to_string();
        let mut r = response_with_tag(&req, 200, "", &tag);
        r.headers
            .push(rsip::Header::Contact(rsip::headers::Contact::new(contact)));
        let r = dialog::response_with_body(r, sdp.clone().into_bytes(), "application/sdp");
        self.respond(key, r.clone());
        let ok = Some(Unacked {
            key: key.clone(),
            usage: UasInvite::answered(r, self.tl.config(), Instant::now()),
        });
        let caller = crate::b2bua::caller_user(&req);
        info!(%mailbox, retrieval, %caller, "voicemail call answered");
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        self.sessions.insert(
            call_id.clone(),
            Session {
                dialog,
                ok,
                peer: source,
                input: input_tx,
                sdp,
            },
        );
        let call = Call {
            shared: self.shared.clone(),
            mbox,
            caller,
            leg,
            codec,
            dtmf_pt,
            retrieval,
        };
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            call.run(input_rx).await;
            let _ = done.send(call_id);
        });
    }

    /// The call's task ended: BYE unless the caller hung up first.
    fn bye(&mut self, call_id: &str) {
        let Some(mut s) = self.sessions.remove(call_id) else {
            return;
        };
        let (via, _) = self.builder_local().new_via(&mut self.rng);
        let bye = s.dialog.request(Method::Bye, &via);
        if let Err(e) = self
            .tl
            .send_request(bye, tx::Transport::Unreliable, s.peer, Instant::now())
        {
            debug!(error = %e, "voicemail BYE not sent");
        }
    }
}

/// One call in voicemail.
struct Call {
    shared: Arc<Shared>,
    mbox: MailboxConfig,
    caller: String,
    leg: Leg,
    codec: Codec,
    dtmf_pt: u8,
    retrieval: bool,
}

/// The player in progress.
struct Playing {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<(RtpPlayer, PlayEnd)>,
}

impl Call {
    async fn run(self, mut input: mpsc::UnboundedReceiver<Input>) {
        let shared = self.shared.clone();
        let mailbox = self.mbox.mailbox.clone();
        let mut paths = HashMap::new();
        let mut menu = if self.retrieval {
            let list = match shared.store.list(&mailbox).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(%mailbox, error = %e, "mailbox not read");
                    Vec::new()
                }
            };
            let ids = list.iter().map(|m| (m.id.clone(), m.new)).collect();
            paths = list.into_iter().map(|m| (m.id, m.path)).collect();
            Menu::retrieval(&self.mbox.pin, ids, shared.cfg.limits)
        } else {
            Menu::deposit(shared.cfg.limits)
        };
        let mut rx = self.leg.subscribe();
        let mut detector = DtmfDetector::new(self.dtmf_pt);
        let mut recorder: Option<RtpRecorder> = None;
        let mut playing: Option<Playing> = None;
        let mut generation = 0u64;
        let (played_tx, mut played) = mpsc::unbounded_channel::<u64>();
        let mut player_cfg = PlayerConfig {
            codec: self.codec,
            ssrc: rand::random(),
            initial_seq: rand::random(),
            initial_timestamp: rand::random(),
            looping: false,
        };
        let mut cmds = menu.start(Instant::now());
        loop {
            for c in std::mem::take(&mut cmds) {
                match c {
                    Command::Play(prompts) => {
                        if let Some(p) = playing.take() {
                            let _ = p.stop.send(true);
                            if let Ok((pl, _)) = p.task.await {
                                player_cfg.initial_seq = pl.next_seq();
                                player_cfg.initial_timestamp = pl.next_timestamp();
                            }
                        }
                        generation += 1;
                        let list = self.playlist(&prompts, &paths);
                        let player = RtpPlayer::with_playlist(player_cfg, list, Instant::now());
                        let (stop, stop_rx) = watch::channel(false);
                        let sink: Arc<dyn RtpSink> = Arc::new(self.leg.clone());
                        let (g, tx) = (generation, played_tx.clone());
                        let task = tokio::spawn(async move {
                            let (pl, end) = audio::play(sink, player, stop_rx).await;
                            if end == PlayEnd::Finished {
                                let _ = tx.send(g);
                            }
                            (pl, end)
                        });
                        playing = Some(Playing { stop, task });
                    }
                    Command::Record(_) => recorder = Some(RtpRecorder::default()),
                    Command::Discard => recorder = None,
                    Command::Keep(kind) => {
                        let samples = recorder.take().map(|r| r.finish()).unwrap_or_default();
                        self.keep(kind, samples).await;
                    }
                    Command::MarkOld(id) => {
                        if let Err(e) = shared.store.mark_old(&mailbox, &id).await {
                            warn!(%mailbox, %id, error = %e, "message not moved to old");
                        }
                        shared.publish(&mailbox).await;
                    }
                    Command::Delete(id) => {
                        if let Err(e) = shared.store.delete(&mailbox, &id).await {
                            warn!(%mailbox, %id, error = %e, "message not deleted");
                        }
                        let _ = shared.events.send(VoicemailEvent::Deleted {
                            mailbox: mailbox.clone(),
                            id,
                        });
                        shared.publish(&mailbox).await;
                    }
                    Command::Hangup => {}
                }
            }
            if menu.ended() {
                break;
            }
            let wake = earliest(menu.poll_timeout(), detector.poll_timeout());
            tokio::select! {
                pkt = rx.recv() => match pkt {
                    Some(p) => {
                        let now = Instant::now();
                        if let Some(d) = detector.push(&p, now) {
                            debug!(%mailbox, key = %d.key, "DTMF");
                            cmds = menu.digit(d.key, now);
                        }
                        if let Some(r) = recorder.as_mut() {
                            r.push(&p);
                        }
                    }
                    None => cmds = menu.hangup(),
                },
                g = played.recv() => {
                    if g == Some(generation) {
                        cmds = menu.play_done(Instant::now());
                    }
                }
                i = input.recv() => match i {
                    Some(Input::Digit(k)) => cmds = menu.digit(k, Instant::now()),
                    Some(Input::Hangup) | None => cmds = menu.hangup(),
                },
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if let Some(d) = detector.expire(now) {
                        cmds = menu.digit(d.key, now);
                    }
                    cmds.extend(menu.timeout(now));
                }
            }
        }
        if let Some(p) = playing.take() {
            let _ = p.stop.send(true);
            let _ = p.task.await;
        }
        self.leg.close();
    }

    fn playlist(
        &self,
        prompts: &[Prompt],
        paths: &HashMap<String, std::path::PathBuf>,
    ) -> Vec<Vec<i16>> {
        let named = |n: &str| self.shared.prompts.get(n).cloned();
        prompts
            .iter()
            .filter_map(|p| match p {
                Prompt::Named(n) => named(n.as_str()),
                Prompt::Beep => Some(audio::prompts::beep(1000.0, 300)),
                Prompt::Greeting => {
                    let own = self.shared.store.greeting_path(&self.mbox.mailbox);
                    audio::wav::read_wav(&own)
                        .ok()
                        .or_else(|| named("vm-intro"))
                }
                Prompt::Message(id) => {
                    let path = paths.get(id)?;
                    match audio::wav::read_wav(path) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            warn!(path = %path.display(), error = %e, "message not readable");
                            None
                        }
                    }
                }
            })
            .collect()
    }

    async fn keep(&self, kind: Recording, samples: Vec<i16>) {
        let shared = &self.shared;
        let mailbox = &self.mbox.mailbox;
        let min = menu::MIN_MESSAGE.as_millis() as usize * audio::SAMPLE_RATE as usize / 1000;
        if samples.len() < min {
            info!(%mailbox, samples = samples.len(), "recording too short: not kept");
            return;
        }
        match kind {
            Recording::Greeting => match shared.store.save_greeting(mailbox, &samples) {
                Ok(()) => {
                    let _ = shared.events.send(VoicemailEvent::Greeting {
                        mailbox: mailbox.clone(),
                    });
                }
                Err(e) => warn!(%mailbox, error = %e, "greeting not saved"),
            },
            Recording::Message => {
                let m = match shared.store.deposit(mailbox, &self.caller, &samples).await {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(%mailbox, error = %e, "message not stored");
                        return;
                    }
                };
                let _ = shared.events.send(VoicemailEvent::Deposited {
                    mailbox: mailbox.clone(),
                    id: m.id.clone(),
                    path: m.path.clone(),
                    duration: m.duration,
                });
                shared.publish(mailbox).await;
                if let (Some(smtp), Some(to)) = (shared.cfg.smtp.clone(), self.mbox.email.clone()) {
                    let (shared, mailbox, caller) =
                        (shared.clone(), mailbox.clone(), self.caller.clone());
                    tokio::spawn(async move {
                        let sent = match tokio::fs::read(&m.path).await {
                            Ok(wav) => {
                                let notice = Notice {
                                    mailbox: &mailbox,
                                    caller: &caller,
                                    duration: m.duration,
                                    id: &m.id,
                                };
                                mail::notify(&smtp, &to, &notice, wav)
                                    .await
                                    .map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        if let Err(e) = &sent {
                            warn!(%mailbox, error = %e, "voicemail e-mail not sent");
                        }
                        let _ = shared.events.send(VoicemailEvent::Mailed {
                            mailbox,
                            id: m.id,
                            to,
                            ok: sent.is_ok(),
                        });
                    });
                }
            }
        }
    }
}
