//! The node on the one event loop of SIP user agents (`sipnet::drive`): its own timers are
//! call control's `poll_timeout`, its own inputs the bus, the media scripts' reports, DTMF,
//! the other nodes' waiting callers and the handle's commands.

use std::time::Instant;

use sip_core::transaction::{self as tx, TransactionLayer};
use sipnet::{Peer, Transports, UserAgent};
use statebus::{BusEvent, Change};
use tokio::sync::{broadcast, mpsc, watch};

use super::{Command, Node};
use crate::call::{self, LegId};

/// The node's inputs beside SIP.
pub(super) struct Inputs {
    /// Device states and peers from the bus (closed: the node stops).
    pub(super) bus: broadcast::Receiver<BusEvent>,
    /// The handle's commands.
    pub(super) commands: mpsc::Receiver<Command>,
    /// Media scripts (announcements, prompts) that ended.
    pub(super) media_done: mpsc::UnboundedReceiver<LegId>,
    /// Keys callers pressed (RFC 4733).
    pub(super) dtmf: mpsc::UnboundedReceiver<(LegId, char)>,
    /// Ticks when other nodes' waiting callers changed (`None`: not on a fabric, or closed).
    pub(super) waiting: Option<watch::Receiver<u64>>,
}

/// One of them.
pub(super) enum Input {
    Bus(BusEvent),
    Command(Command),
    MediaDone(LegId),
    Dtmf(LegId, char),
    /// The waiting callers changed (false: their channel closed).
    Waiting(bool),
}

impl UserAgent for Node {
    type Input = Input;

    fn sip(&mut self) -> (&Transports, &mut TransactionLayer<Peer>) {
        (&self.transports, &mut self.tl)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn on_timer(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    async fn input(&mut self) -> Option<Input> {
        let i = &mut self.inputs;
        let waiting = &mut i.waiting;
        tokio::select! {
            ev = statebus::recv(&mut i.bus) => ev.map(Input::Bus),
            Some(leg) = i.media_done.recv() => Some(Input::MediaDone(leg)),
            Some((leg, key)) = i.dtmf.recv() => Some(Input::Dtmf(leg, key)),
            changed = async { waiting.as_mut()?.changed().await.ok() }, if waiting.is_some() => {
                Some(Input::Waiting(changed.is_some()))
            }
            Some(cmd) = i.commands.recv() => Some(Input::Command(cmd)),
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Bus(BusEvent::Changed(Change::Device { key, state })) => {
                self.core.device_state(&key, state, now);
                self.changed();
            }
            // A member that may announce a SIP address: keep it alive from now on.
            Input::Bus(BusEvent::Changed(Change::PeerUp(_))) => self.core.peer_up(now),
            Input::Bus(BusEvent::Lagged(_)) => self.core.resync(self.bus.snapshot().devices, now),
            Input::Bus(_) => {}
            Input::MediaDone(leg) => self.core.announcement_done(leg, now),
            Input::Dtmf(leg, key) => self.core.dtmf(leg, key, now),
            Input::Waiting(true) => self.core.remote_waiting(&self.bus.waiting(), now),
            Input::Waiting(false) => self.inputs.waiting = None,
            Input::Command(cmd) => self.command(cmd, now),
        }
    }

    fn on_event(&mut self, ev: tx::Event<Peer>, now: Instant) {
        self.core.handle(ev, now);
    }

    /// Waiting callers to the bus, call control's outputs applied.
    fn poll_outputs(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(w) = self.core.poll_waiting() {
            any = true;
            match w {
                crate::engine::WaitingChange::Put(w) => self.bus.publish_waiting(w),
                crate::engine::WaitingChange::Gone { queue, caller } => {
                    self.bus.withdraw_waiting(&queue, &caller)
                }
            }
        }
        while let Some(out) = self.core.poll_output() {
            any = true;
            if let Some(out) = call::apply(&mut self.tl, &mut self.core, out, now) {
                self.perform(out);
            }
        }
        any
    }

    /// After every step: the member state written if it changed (`persist.rs`), then the
    /// shutdown's progress.
    async fn finished(&mut self) -> bool {
        self.save_members();
        self.shutdown_step().await
    }
}

impl Node {
    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Stats(reply) => {
                let _ = reply.send(self.core.report());
            }
            Command::Drain(retry_after) => self.core.drain(retry_after),
            Command::Finish(done) => {
                self.finish_reply = Some(done);
                self.core.finish(now);
            }
            Command::Admin(op, reply) => {
                let _ = reply.send(self.admin(op));
                self.changed();
            }
            Command::Floor(reply) => {
                let _ = reply.send(self.floor());
            }
        }
    }
}
