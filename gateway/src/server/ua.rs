//! The gateway on the one event loop of SIP user agents (`sipnet::drive`): its own timers are
//! the B2BUA's `poll_timeout` and housekeeping (`timers.rs`), its own inputs the bus's MWI
//! changes, the qualify interval, durable commits, the handle's controls and the log
//! limiter's summaries.

use std::time::Instant;

use statebus::BusEvent;
use tokio::sync::mpsc;
use tracing::info;

use super::{shards, shutdown, Core};
use crate::registrar::RegistrarEvent;
use crate::sip::transaction::{self as tx, TransactionLayer};
use crate::transport::{earliest, receive_overload, Peer, TransportEvent, Transports, UserAgent};

/// The running gateway: its core and the inputs only the loop reads.
pub(super) struct Running {
    pub(super) core: Core,
    /// Qualify every registered contact this often.
    pub(super) qualify: tokio::time::Interval,
    /// The handle's controls (shutdown, supervisors' calls).
    pub(super) control: mpsc::UnboundedReceiver<shutdown::Control>,
}

/// One of the gateway's own inputs.
pub(super) enum Input {
    /// A line was suppressed on another task: its summary is due later (`next_deadline`).
    Suppressed,
    /// A bus change (MWI).
    Mwi(BusEvent),
    /// The qualify interval ticked.
    Qualify,
    /// Durable registrations committed up to this sequence number.
    Committed(u64),
    /// A control from the handle.
    Control(shutdown::Control),
    /// A register shard's news (`server/shards.rs`).
    Shard(shards::News),
}

impl UserAgent for Running {
    type Input = Input;

    fn sip(&mut self) -> (&Transports, &mut TransactionLayer<Peer>) {
        (&self.core.transports, &mut self.core.tl)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let core = &mut self.core;
        earliest(core.b2bua.poll_timeout(), core.housekeeping_due())
    }

    fn on_timer(&mut self, now: Instant) {
        self.core.on_timers(now);
    }

    /// Refused sources are dropped here, before the transaction layer; the rest goes through
    /// overload control.
    async fn on_datagram(&mut self, ev: TransportEvent, backlog: usize) {
        let core = &mut self.core;
        core.housekeeping.traffic = true;
        if core.admitted(&ev) {
            // An out-of-dialog REGISTER goes to its register shard, its queueing delay noted.
            if let Some(shards) = core.shards.as_mut() {
                if let Some(i) = shards.route(&ev) {
                    if let TransportEvent::Message(m) = &ev {
                        core.overload.observe(
                            std::time::Instant::now(),
                            crate::transport::queue_wait(m, backlog),
                        );
                    }
                    shards.dispatch(i, ev);
                    return;
                }
            }
            let (transports, tl, overload) = (&core.transports, &mut core.tl, &mut core.overload);
            receive_overload(transports, tl, overload, backlog, ev).await
        }
    }

    async fn input(&mut self) -> Option<Input> {
        let core = &mut self.core;
        tokio::select! {
            _ = crate::transport::loglimit::suppressed() => Some(Input::Suppressed),
            Some(ev) = statebus::recv(&mut core.mwi.rx) => Some(Input::Mwi(ev)),
            _ = self.qualify.tick() => Some(Input::Qualify),
            Some(seq) = core.durable.committed.recv() => Some(Input::Committed(seq)),
            Some(c) = self.control.recv() => Some(Input::Control(c)),
            Some(n) = shards::news(&mut core.shards) => Some(Input::Shard(n)),
        }
    }

    fn on_input(&mut self, input: Input) {
        let core = &mut self.core;
        match input {
            Input::Suppressed => {}
            Input::Mwi(ev) => {
                core.housekeeping.traffic = true;
                core.on_mwi_bus(ev)
            }
            Input::Qualify => core.qualify_all(),
            Input::Committed(seq) => {
                core.housekeeping.traffic = true;
                core.committed(seq)
            }
            Input::Control(c) => {
                core.housekeeping.traffic = true;
                core.on_control(c)
            }
            Input::Shard(n) => {
                core.housekeeping.traffic = true;
                core.on_shard(n)
            }
        }
    }

    fn on_event(&mut self, ev: tx::Event<Peer>, _now: Instant) {
        self.core.on_tx_event(ev);
    }

    /// The registrar's events (device state, qualify) and the B2BUA's actions.
    fn poll_outputs(&mut self, _now: Instant) -> bool {
        let core = &mut self.core;
        let mut any = false;
        while let Some(ev) = core.registrar.poll_event() {
            any = true;
            match ev {
                RegistrarEvent::Registered { aor } | RegistrarEvent::Unregistered { aor } => {
                    core.qualify.forget(&aor);
                    let key = core.device_key(&aor);
                    core.refresh_device(&key);
                }
            }
        }
        while let Some(a) = core.b2bua.poll_action() {
            any = true;
            core.on_b2bua_action(a);
        }
        any
    }

    async fn finished(&mut self) -> bool {
        let done = self.core.shutdown_step().await;
        if done {
            info!("shutdown: gateway stopped");
        }
        done
    }
}
