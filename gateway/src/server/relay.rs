//! Relay glue: the B2BUA's [`MediaControl`] on the RTP relay (two legs per call, recording,
//! music on hold), and the calls in progress (parties, leg figures) as the [`Gateway`] handle
//! shows them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Gateway;
use crate::b2bua::{self, MediaControl};
use crate::media::{self as relay, Leg, LegStats, MediaRelay};

/// The relay legs of the calls in progress, shared with the [`Gateway`] handle for queries.
pub(super) type CallLegs = Arc<std::sync::Mutex<HashMap<b2bua::CallId, (Leg, Leg)>>>;

/// Who is in each call in progress, shared with the [`Gateway`] handle for queries.
pub(super) type CallParties = Arc<std::sync::Mutex<HashMap<b2bua::CallId, Parties>>>;

/// Who is in a call, as the gateway routed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parties {
    /// The caller's user part (From).
    pub caller: String,
    /// The number dialled (Request-URI user).
    pub dialled: String,
    /// Calling device, if one of ours.
    pub caller_device: Option<String>,
    /// Called device, if one of ours.
    pub callee_device: Option<String>,
}

/// A call in progress: who is in it and the relay's figures for both legs.
#[derive(Debug, Clone)]
pub struct LiveCall {
    /// Gateway-local call number.
    pub call: u64,
    /// Caller, number dialled, devices.
    pub parties: Parties,
    /// Caller-side leg.
    pub a: LegStats,
    /// Callee-side leg.
    pub b: LegStats,
}

/// [`MediaControl`] on the RTP relay.
pub(super) struct RelayMedia {
    pub(super) relay: MediaRelay,
    pub(super) legs: CallLegs,
    pub(super) parties: CallParties,
    /// Parties of the INVITE being handed to the B2BUA: stored under its call number when
    /// the B2BUA opens media for it.
    pub(super) incoming: Option<Parties>,
    record_dir: Option<std::path::PathBuf>,
    /// Final figures of calls closed but not yet reported.
    pub(super) closed: HashMap<b2bua::CallId, (LegStats, LegStats)>,
    /// Music on hold: the sources, the queue of the INVITE being handed to the B2BUA (its
    /// `X-CF-Offer`), the device-key prefix (stripped to find a device's music), each call's
    /// hold state and players.
    moh_sources: Arc<crate::media::moh::MohSources>,
    pub(super) incoming_queue: Option<String>,
    device_prefix: String,
    moh: HashMap<b2bua::CallId, crate::media::moh::CallMoh>,
    /// Music-on-hold packets of calls closed but not yet reported.
    pub(super) moh_closed: HashMap<b2bua::CallId, [u64; 2]>,
}

/// The user of device key `device` (`PJSIP/2001` → `2001` with prefix `PJSIP/`).
fn device_user(prefix: &str, device: &Option<String>) -> Option<String> {
    device
        .as_deref()
        .map(|d| d.strip_prefix(prefix).unwrap_or(d))
        .map(str::to_owned)
}

impl RelayMedia {
    pub(super) fn new(
        relay: MediaRelay,
        record_dir: Option<std::path::PathBuf>,
        moh_sources: Arc<crate::media::moh::MohSources>,
        device_prefix: String,
    ) -> RelayMedia {
        RelayMedia {
            relay,
            legs: CallLegs::default(),
            parties: CallParties::default(),
            incoming: None,
            closed: HashMap::new(),
            record_dir,
            moh_sources,
            incoming_queue: None,
            device_prefix,
            moh: HashMap::new(),
            moh_closed: HashMap::new(),
        }
    }

    fn with<R>(&self, call: b2bua::CallId, f: impl FnOnce(&Leg, &Leg) -> R) -> Option<R> {
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        legs.get(&call).map(|(a, b)| f(a, b))
    }
}

impl MediaControl for RelayMedia {
    fn open(&mut self, call: b2bua::CallId) -> Option<b2bua::MediaPorts> {
        // Both legs on one relay thread: the bridge's packets stay on one core.
        let (a, b) = match self.relay.leg_pair() {
            Ok(legs) => legs,
            Err(e) => {
                warn!(error = %e, "no RTP ports for a call");
                return None;
            }
        };
        let ports = b2bua::MediaPorts {
            a: a.local_rtp(),
            b: b.local_rtp(),
        };
        if let Some(dir) = &self.record_dir {
            for (leg, side) in [(&a, "caller"), (&b, "callee")] {
                record(leg, dir.join(format!("call-{}-{side}.wav", call.0)));
            }
        }
        self.legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call, (a, b));
        let mut moh = crate::media::moh::CallMoh::default();
        moh.queue = self.incoming_queue.take();
        if let Some(p) = self.incoming.take() {
            let prefix = self.device_prefix.as_str();
            moh.devices = [
                device_user(prefix, &p.caller_device),
                device_user(prefix, &p.callee_device),
            ];
            self.parties
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(call, p);
        }
        self.moh.insert(call, moh);
        Some(ports)
    }

    fn set_remote(
        &mut self,
        call: b2bua::CallId,
        side: b2bua::Side,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
    ) {
        self.with(call, |a, b| match side {
            b2bua::Side::A => a.set_remote(rtp, rtcp),
            b2bua::Side::B => b.set_remote(rtp, rtcp),
        });
    }

    fn bridge(&mut self, call: b2bua::CallId) {
        if let Some(Err(e)) = self.with(call, relay::bridge) {
            warn!(error = %e, "cannot bridge call media");
        }
    }

    fn close(&mut self, call: b2bua::CallId) {
        if let Some(mut moh) = self.moh.remove(&call) {
            moh.stop();
            self.moh_closed.insert(call, moh.packets());
        }
        let legs = self
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&call);
        self.parties
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&call);
        if let Some((a, b)) = legs {
            a.close();
            b.close();
            self.closed.insert(call, (a.stats(), b.stats()));
        }
    }

    fn idle(&self, call: b2bua::CallId, now: Instant) -> Option<Duration> {
        // Either phone falling silent ends the call (Asterisk's rtptimeout is per channel).
        self.with(call, |a, b| a.idle_for(now).max(b.idle_for(now)))
    }

    fn hold(&mut self, call: b2bua::CallId, holder: b2bua::Side, holding: bool) {
        let Some(moh) = self.moh.get_mut(&call) else {
            return;
        };
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        let Some((a, b)) = legs.get(&call) else {
            return;
        };
        let p = match holder {
            b2bua::Side::A => 0,
            b2bua::Side::B => 1,
        };
        moh.set_hold(p, holding, [a, b], &self.moh_sources, Instant::now());
        info!(
            call = call.0,
            holding,
            music_to_caller = moh.playing(0),
            music_to_callee = moh.playing(1),
            "hold"
        );
    }

    fn srtp(
        &mut self,
        call: b2bua::CallId,
        side: b2bua::Side,
        key: Option<crate::media::srtp::SdesKey>,
    ) {
        // Music on hold to an SRTP phone: protected with the key that phone receives with.
        self.with(call, |a, b| match side {
            b2bua::Side::A => a.set_srtp(key.as_ref(), Some(b)),
            b2bua::Side::B => b.set_srtp(key.as_ref(), Some(a)),
        });
    }
}

/// Records what arrives on `leg` (decoded G.711, reordered, gaps filled) and writes it to
/// `path` as 16-bit PCM WAV when the leg closes.
fn record(leg: &Leg, path: std::path::PathBuf) {
    let mut rx = leg.subscribe();
    tokio::spawn(async move {
        let mut rec = crate::audio::RtpRecorder::default();
        while let Some(pkt) = rx.recv().await {
            rec.push(&pkt);
        }
        let write = tokio::task::spawn_blocking(move || {
            rec.finish_to_path(&path, crate::audio::WavEncoding::Pcm16)
                .map_err(|e| (path, e))
        });
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err((path, e))) => {
                warn!(path = %path.display(), error = %e, "recording not written")
            }
            Err(e) => warn!(error = %e, "recording task failed"),
        }
    });
}

impl Gateway {
    /// The calls in progress, in call order: parties and the relay's figures.
    pub fn calls(&self) -> Vec<LiveCall> {
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        let parties = self.parties.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = legs
            .iter()
            .map(|(id, (a, b))| LiveCall {
                call: id.0,
                parties: parties.get(id).cloned().unwrap_or_default(),
                a: a.stats(),
                b: b.stats(),
            })
            .collect();
        v.sort_by_key(|c| c.call);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::RelayConfig;

    fn media() -> RelayMedia {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        // Two relay threads, as on a 2-core machine.
        let relay =
            MediaRelay::with_threads(RelayConfig::new(ip, ip, 47100, 47199), 2).expect("relay");
        RelayMedia::new(relay, None, Arc::default(), "PJSIP/".into())
    }

    #[test]
    fn device_users_lose_the_prefix() {
        assert_eq!(
            device_user("PJSIP/", &Some("PJSIP/2001".into())).as_deref(),
            Some("2001")
        );
        assert_eq!(
            device_user("PJSIP/", &Some("SIP/9".into())).as_deref(),
            Some("SIP/9")
        );
        assert_eq!(device_user("PJSIP/", &None), None);
    }

    #[tokio::test]
    async fn a_call_gets_two_legs_its_parties_and_its_figures_when_closed() {
        let mut m = media();
        m.incoming = Some(Parties {
            caller: "1001".into(),
            dialled: "600".into(),
            caller_device: Some("PJSIP/1001".into()),
            callee_device: Some("PJSIP/2001".into()),
        });
        m.incoming_queue = Some("sales".into());
        let call = b2bua::CallId(7);
        let ports = m.open(call).expect("ports");
        assert_ne!(ports.a, ports.b);
        assert!(
            m.incoming.is_none() && m.incoming_queue.is_none(),
            "taken by the call"
        );
        let moh = m.moh.get(&call).expect("hold state");
        assert_eq!(moh.queue.as_deref(), Some("sales"));
        assert_eq!(
            moh.devices,
            [Some("1001".to_owned()), Some("2001".to_owned())]
        );
        assert_eq!(m.parties.lock().expect("parties")[&call].dialled, "600");
        assert!(m.idle(call, Instant::now()).is_some());
        // A second call without parties still gets its legs.
        let other = m.open(b2bua::CallId(8)).expect("ports");
        assert!(![ports.a, ports.b].contains(&other.a));
        // Each call's two legs on one relay thread, the calls on different threads.
        let threads = |call| {
            let legs = m.legs.lock().expect("legs");
            let (a, b) = &legs[&b2bua::CallId(call)];
            (m.relay.thread_of(a), m.relay.thread_of(b))
        };
        assert_eq!(threads(7), (Some(0), Some(0)));
        assert_eq!(threads(8), (Some(1), Some(1)));

        m.close(call);
        assert!(!m.legs.lock().expect("legs").contains_key(&call));
        assert!(!m.parties.lock().expect("parties").contains_key(&call));
        let (a, b) = m.closed.remove(&call).expect("final figures");
        assert_eq!((a.rtp_packets_in, b.rtp_packets_in), (0, 0));
        assert_eq!(m.moh_closed.remove(&call), Some([0, 0]));
        assert_eq!(m.idle(call, Instant::now()), None, "gone");
    }
}
