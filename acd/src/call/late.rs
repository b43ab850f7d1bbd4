//! Offers given up (no provisional response in time, or cancelled before one) whose INVITE
//! transaction has ended (Timer B, or forgotten after 64·T1): remembered for a while so that a
//! 2xx arriving even later, e.g. a gateway's 200 retransmission after a partition heals, is
//! still ACKed and BYEd and the agent's phone does not stay in a call for nobody. Sans-IO (time
//! passed in); bounded in count and age, what is over is dropped (the oldest first).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::Header;
use sip_core::dialog::Dialog;
use sip_core::message::{Method, Request, Response};
use sipnet::Peer;
use tracing::warn;

use super::{CallControl, Fabric, Media};
use sip_core::ua::ToSend;

/// Most abandoned offers remembered (the oldest is forgotten first).
pub const MAX_ABANDONED: usize = 256;
/// How long one is remembered after its transaction ended (a gateway retransmits a 2xx for
/// 64·T1, 32 s with the default T1, from the agent's answer).
pub const KEEP: Duration = Duration::from_secs(64);

struct Entry {
    until: Instant,
    call_id: String,
    invite: Request,
    peer: Peer,
    /// The BYE went out (later 2xx retransmissions are only ACKed).
    bye_sent: bool,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Abandoned {
    entries: VecDeque<Entry>,
    /// Entries forgotten because [`MAX_ABANDONED`] were remembered.
    dropped: u64,
}

fn call_id(headers: &rsip::Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::CallId(c) => Some(c.value().trim().to_owned()),
        _ => None,
    })
}

fn is_invite_response(r: &Response) -> bool {
    r.headers.iter().any(|h| match h {
        Header::CSeq(c) => c
            .value()
            .split_whitespace()
            .nth(1)
            .is_some_and(|m| m.eq_ignore_ascii_case("INVITE")),
        _ => false,
    })
}

impl Abandoned {
    /// Remembers an abandoned offer's INVITE (sent to `peer`) from `now`.
    pub(super) fn remember(&mut self, now: Instant, invite: Request, peer: Peer) {
        let Some(call_id) = call_id(&invite.headers) else {
            return;
        };
        self.expire(now);
        if self.entries.len() >= MAX_ABANDONED {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(Entry {
            until: now + KEEP,
            call_id,
            invite,
            peer,
            bye_sent: false,
        });
    }

    fn expire(&mut self, now: Instant) {
        while self.entries.front().is_some_and(|e| e.until <= now) {
            self.entries.pop_front();
        }
    }

    /// How many are remembered now.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgotten early because the memory was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<M: Media, F: Fabric> CallControl<M, F> {
    /// A response matching no transaction: a 2xx to a remembered abandoned offer is ACKed (each
    /// retransmission) and the dialog it created is ended with a BYE (once).
    pub(super) fn late_answer(&mut self, response: &Response, now: Instant) {
        let code = response.status_code.code();
        if !(200..300).contains(&code) || !is_invite_response(response) {
            return;
        }
        self.abandoned.expire(now);
        let Some(cid) = call_id(&response.headers) else {
            return;
        };
        let Some(e) = self.abandoned.entries.iter_mut().find(|e| e.call_id == cid) else {
            return;
        };
        let Ok(mut d) = Dialog::uac(&e.invite, response) else {
            return;
        };
        let first = !e.bye_sent;
        e.bye_sent = true;
        let peer = e.peer.clone();
        let branch = self.new_branch();
        let ack = d.ack(1, &self.via(&branch));
        self.emit_sip(ToSend::Stateless {
            message: ack.into(),
            dest: peer.clone(),
        });
        if first {
            warn!(gateway = %peer.addr, call_id = %cid, "a 2xx to an offer given up: ACK and BYE");
            let branch = self.new_branch();
            let bye = d.request(Method::Bye, &self.via(&branch));
            self.send(bye, &branch, peer);
        }
    }
}
