//! `GET /metrics`: Prometheus text exposition (the `prometheus` crate). Each scrape builds a
//! registry from the current figures — gateway calls and RTP loss and jitter per live leg,
//! devices by state (registered phones read as reachable states), the ACD's queues (callers,
//! longest wait, agents by state, counters), the state bus's health and the SIP overload
//! control's counts — plus totals counted from the gateway's call events since start (calls
//! ended, RTP packets lost, jitter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::Sources;

/// Totals from the gateway's events, since start.
#[derive(Debug, Default)]
pub struct Totals {
    calls_ended: Mutex<std::collections::BTreeMap<String, u64>>,
    rtp_lost: AtomicU64,
    rtp_packets_in: AtomicU64,
    /// Jitter of ended legs, in ms (histogram observations, kept as a bounded sample).
    jitter: Mutex<Vec<f64>>,
    offers_refused: AtomicU64,
    /// Wallboard event streams open now, and those refused at the bound.
    pub(super) wallboard_streams: AtomicU64,
    pub(super) wallboard_refused: AtomicU64,
}

/// Most jitter observations kept between scrapes.
const MAX_JITTER_SAMPLES: usize = 100_000;

/// Counts `CallEnded` / `OfferRefused` events until the gateway stops.
pub(super) async fn count_gateway_events(
    mut rx: tokio::sync::broadcast::Receiver<gateway::server::GatewayEvent>,
    totals: Arc<Totals>,
) {
    use gateway::server::GatewayEvent as E;
    loop {
        match rx.recv().await {
            Ok(E::CallEnded { reason, a, b, .. }) => {
                let mut m = totals.calls_ended.lock().unwrap_or_else(|p| p.into_inner());
                let reason: String = reason.to_string().chars().take(32).collect();
                if m.len() < 64 || m.contains_key(&reason) {
                    *m.entry(reason).or_default() += 1;
                } else {
                    *m.entry("other".into()).or_default() += 1;
                }
                drop(m);
                for st in [a, b].into_iter().flatten() {
                    totals
                        .rtp_lost
                        .fetch_add(st.lost.max(0) as u64, Ordering::Relaxed);
                    totals
                        .rtp_packets_in
                        .fetch_add(st.rtp_packets_in, Ordering::Relaxed);
                    let mut j = totals.jitter.lock().unwrap_or_else(|p| p.into_inner());
                    if j.len() < MAX_JITTER_SAMPLES {
                        j.push(st.jitter_ms);
                    }
                }
            }
            Ok(E::OfferRefused { .. }) => {
                totals.offers_refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(E::Mwi { .. }) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// A histogram of ended legs' jitter, fed once from the kept samples (then kept across
/// scrapes).
fn jitter_histogram(totals: &Totals) -> prometheus::Result<Histogram> {
    static HIST: std::sync::OnceLock<Histogram> = std::sync::OnceLock::new();
    let h = match HIST.get() {
        Some(h) => h.clone(),
        None => {
            let h = Histogram::with_opts(
                HistogramOpts::new(
                    "callfabric_rtp_jitter_ms",
                    "RFC 3550 interarrival jitter of each ended call leg, ms",
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0]),
            )?;
            HIST.get_or_init(|| h).clone()
        }
    };
    let samples = std::mem::take(&mut *totals.jitter.lock().unwrap_or_else(|p| p.into_inner()));
    for s in samples {
        h.observe(s);
    }
    Ok(h)
}

fn gather(s: &Sources, floor: Option<&acd::node::Floor>) -> prometheus::Result<String> {
    let r = Registry::new();
    macro_rules! reg {
        ($m:expr) => {{
            let m = $m;
            r.register(Box::new(m.clone()))?;
            m
        }};
    }
    // The state bus.
    let online = reg!(IntGauge::new(
        "callfabric_bus_online",
        "1 while the state bus can publish (the in-process bus always)"
    )?);
    online.set(s.xmpp.as_ref().map_or(1, |x| i64::from(x.is_online())));
    if let Some(x) = &s.xmpp {
        let st = x.stats();
        let c = reg!(IntCounterVec::new(
            Opts::new("callfabric_bus_events_total", "XMPP state bus counters"),
            &["event"]
        )?);
        for (k, v) in [
            ("connects", st.connects),
            ("published", st.published),
            ("publish_acked", st.publish_acked),
            ("publish_errors", st.publish_errors),
            ("items_received", st.items_received),
            ("items_dropped", st.items_dropped),
            ("stanzas_dropped", st.stanzas_dropped),
        ] {
            c.with_label_values(&[k]).inc_by(v);
        }
    }
    let snap = s.bus.snapshot();
    let devices = reg!(IntGaugeVec::new(
        Opts::new(
            "callfabric_devices",
            "Devices on the fabric by aggregate state"
        ),
        &["state"]
    )?);
    let reachable = reg!(IntGauge::new(
        "callfabric_devices_reachable",
        "Devices in a reachable state (a registered phone: not UNAVAILABLE, INVALID or UNKNOWN)"
    )?);
    for st in snap.devices.values() {
        devices.with_label_values(&[st.as_wire()]).inc();
        if !matches!(
            st,
            statebus::DeviceState::Unavailable
                | statebus::DeviceState::Invalid
                | statebus::DeviceState::Unknown
        ) {
            reachable.inc();
        }
    }
    // The gateway.
    if let Some(gw) = &s.gateway {
        let calls = gw.calls();
        reg!(IntGauge::new(
            "callfabric_gateway_calls_active",
            "Calls in progress on this gateway"
        )?)
        .set(calls.len() as i64);
        let lost = reg!(IntGaugeVec::new(
            Opts::new(
                "callfabric_rtp_leg_lost_packets",
                "RFC 3550 cumulative packets lost on a live call leg"
            ),
            &["call", "leg"]
        )?);
        let jit = reg!(GaugeVec::new(
            Opts::new(
                "callfabric_rtp_leg_jitter_ms",
                "RFC 3550 interarrival jitter of a live call leg, ms"
            ),
            &["call", "leg"]
        )?);
        let pin = reg!(IntGaugeVec::new(
            Opts::new(
                "callfabric_rtp_leg_packets_in",
                "RTP packets received on a live call leg"
            ),
            &["call", "leg"]
        )?);
        for c in &calls {
            let id = c.call.to_string();
            for (leg, st) in [("a", &c.a), ("b", &c.b)] {
                lost.with_label_values(&[id.as_str(), leg]).set(st.lost);
                jit.with_label_values(&[id.as_str(), leg]).set(st.jitter_ms);
                pin.with_label_values(&[id.as_str(), leg])
                    .set(i64::try_from(st.rtp_packets_in).unwrap_or(i64::MAX));
            }
        }
        let t = &s.metrics;
        let ended = reg!(IntCounterVec::new(
            Opts::new(
                "callfabric_gateway_calls_ended_total",
                "Calls ended on this gateway since start, by reason"
            ),
            &["reason"]
        )?);
        for (k, v) in t
            .calls_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            ended.with_label_values(&[k.as_str()]).inc_by(*v);
        }
        reg!(IntCounter::new(
            "callfabric_rtp_lost_packets_total",
            "RTP packets lost on ended calls' legs since start (RFC 3550)"
        )?)
        .inc_by(t.rtp_lost.load(Ordering::Relaxed));
        reg!(IntCounter::new(
            "callfabric_rtp_packets_in_total",
            "RTP packets received on ended calls' legs since start"
        )?)
        .inc_by(t.rtp_packets_in.load(Ordering::Relaxed));
        reg!(IntCounter::new(
            "callfabric_gateway_offers_refused_total",
            "ACD offers the gateway refused before ringing"
        )?)
        .inc_by(t.offers_refused.load(Ordering::Relaxed));
        reg!(jitter_histogram(t)?);
        // The RTP relay's threads (issue 16): whether `rtp_realtime_priority` took.
        let rt = gw.relay_threads();
        let threads = reg!(IntGaugeVec::new(
            Opts::new(
                "callfabric_rtp_relay_threads",
                "The gateway's RTP relay threads by scheduling: realtime (SCHED_FIFO, \
                 rtp_realtime_priority granted) or ordinary"
            ),
            &["scheduling"]
        )?);
        for (k, v) in [("realtime", rt.realtime), ("ordinary", rt.ordinary)] {
            threads
                .with_label_values(&[k])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        reg!(IntCounter::new(
            "callfabric_rtp_relay_busy_cap_sleeps_total",
            "Times one of the gateway's real-time relay threads reached its busy cap (7.5 ms \
             of 10) and slept: a flood, or more streams than its core relays"
        )?)
        .inc_by(rt.duty_sleeps);
        // Overload control (issue 16).
        let (c, shedding) = gw.overload();
        let ov = reg!(IntCounterVec::new(
            Opts::new(
                "callfabric_gateway_overload_total",
                "SIP overload control since start: new requests admitted, refused with 503, \
                 low-value requests (OPTIONS) and retransmissions dropped"
            ),
            &["action"]
        )?);
        for (k, v) in [
            ("admitted", c.admitted),
            ("rejected_503", c.rejected),
            ("dropped_low_value", c.dropped_low),
            ("dropped_retransmission", c.dropped_retransmissions),
        ] {
            ov.with_label_values(&[k]).inc_by(v);
        }
        // The SIP transports: what was dropped before the core saw it.
        let dropped = reg!(IntCounterVec::new(
            Opts::new(
                "callfabric_gateway_sip_datagrams_dropped_total",
                "SIP datagrams dropped before the core: oversize, unparsable (answered 400 when \
                 a request), or by the kernel at a listener's full receive buffer (SO_RXQ_OVFL)"
            ),
            &["reason"]
        )?);
        count_drops(&dropped, &gw.transport_stats());
        let tx = gw.transactions();
        let txs = reg!(IntGaugeVec::new(
            Opts::new(
                "callfabric_gateway_sip_transactions",
                "SIP transactions: live (parsed request kept), completed (non-INVITE server \
                 transactions held compact until Timer J)"
            ),
            &["state"]
        )?);
        for (k, v) in [("live", tx.live), ("completed", tx.completed)] {
            txs.with_label_values(&[k])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        reg!(IntGauge::new(
            "callfabric_gateway_sip_completed_table_capacity",
            "Entries the completed-transaction table holds before growing (it shrinks after a load)"
        )?)
        .set(i64::try_from(tx.completed_capacity).unwrap_or(i64::MAX));
        reg!(IntCounter::new(
            "callfabric_gateway_sip_transactions_abandoned_total",
            "Non-INVITE server transactions ended because the gateway sent no final response \
             within 2·64·max(T1, 500 ms) (nothing sent; the client had given up)"
        )?)
        .inc_by(tx.abandoned);
        reg!(IntCounter::new(
            "callfabric_gateway_sip_retransmissions_mismatched_total",
            "Requests that matched a completed transaction (branch, sent-by, method) but whose \
             header fields differ from its request's: not a retransmission, so not answered"
        )?)
        .inc_by(tx.mismatched);
        reg!(IntCounter::new(
            "callfabric_gateway_register_unheld_total",
            "REGISTER 200 OKs sent before their binding was stored because the 200s held for \
             the durable commit were at their bound (the database stalled)"
        )?)
        .inc_by(gw.register_unheld());
        let (timer_c, ring_timeouts) = gw.invite_timeouts();
        reg!(IntCounter::new(
            "callfabric_gateway_invite_timer_c_total",
            "INVITE branches to callees ended by Timer C (RFC 3261 §16.6 step 11: no final \
             response within timer_c_secs of the INVITE or of the last provisional): CANCELled, \
             or given up before any provisional"
        )?)
        .inc_by(timer_c);
        reg!(IntCounter::new(
            "callfabric_gateway_ring_timeouts_total",
            "Calls to this gateway's devices unanswered within ring_timeout_secs: callees \
             CANCELled, 480 to the caller"
        )?)
        .inc_by(ring_timeouts);
        reg!(IntCounter::new(
            "callfabric_gateway_register_behind_full_total",
            "REGISTER refreshes stored before their 200 OK (as a change is) because the AORs \
             whose refresh waits to be written behind were at their bound"
        )?)
        .inc_by(gw.register_behind_full());
        let (shards, shard_dropped, shard_core_full) = gw.register_shards();
        reg!(IntGauge::new(
            "callfabric_gateway_sip_shards",
            "Register shards of the SIP core (1: unsharded)"
        )?)
        .set(i64::try_from(shards).unwrap_or(i64::MAX));
        reg!(IntCounter::new(
            "callfabric_gateway_register_shard_dropped_total",
            "REGISTERs dropped because a register shard's queue was full"
        )?)
        .inc_by(shard_dropped);
        reg!(IntCounter::new(
            "callfabric_gateway_register_core_queue_full_total",
            "REGISTERs a register shard authenticated and answered 503 because the shards' \
             queue to the core was full"
        )?)
        .inc_by(shard_core_full);
        reg!(IntGauge::new(
            "callfabric_gateway_overload_shedding",
            "1 while SIP overload control sheds load"
        )?)
        .set(i64::from(shedding));
    }
    let t = &s.metrics;
    reg!(IntGauge::new(
        "callfabric_wallboard_streams",
        "Wallboard event streams open now"
    )?)
    .set(i64::try_from(t.wallboard_streams.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    reg!(IntCounter::new(
        "callfabric_wallboard_streams_refused_total",
        "Wallboard event streams refused (over the bound)"
    )?)
    .inc_by(t.wallboard_refused.load(Ordering::Relaxed));
    // The ACD.
    if let Some(f) = floor {
        let waiting = reg!(IntGaugeVec::new(
            Opts::new("callfabric_queue_callers", "Callers waiting in a queue"),
            &["queue"]
        )?);
        let longest = reg!(GaugeVec::new(
            Opts::new(
                "callfabric_queue_longest_wait_seconds",
                "Wait of the longest-waiting caller"
            ),
            &["queue"]
        )?);
        let sl = reg!(GaugeVec::new(
            Opts::new(
                "callfabric_queue_service_level_ratio",
                "Answered within the service level, of all answered (0..1)"
            ),
            &["queue"]
        )?);
        let agents = reg!(IntGaugeVec::new(
            Opts::new(
                "callfabric_queue_members",
                "Queue members by state (paused, ringing, wrapup, available, or the device state)"
            ),
            &["queue", "state"]
        )?);
        let counters = reg!(IntCounterVec::new(
            Opts::new(
                "callfabric_queue_callers_total",
                "Queue counters since start"
            ),
            &["queue", "event"]
        )?);
        for q in &f.queues {
            let n = q.name.as_str();
            waiting.with_label_values(&[n]).set(q.waiting.len() as i64);
            longest.with_label_values(&[n]).set(
                q.waiting
                    .iter()
                    .map(|c| c.wait.as_secs_f64())
                    .fold(0.0, f64::max),
            );
            sl.with_label_values(&[n])
                .set(q.service_level_pct() / 100.0);
            for a in &q.agents {
                agents.with_label_values(&[n, member_state(a)]).inc();
            }
            for (ev, v) in [
                ("joined", q.stats.joined),
                ("answered", q.stats.answered),
                ("abandoned", q.stats.abandoned),
                ("timed_out", q.stats.timed_out),
                ("completed", q.stats.completed),
            ] {
                counters.with_label_values(&[n, ev]).inc_by(v);
            }
        }
        reg!(IntGauge::new(
            "callfabric_acd_calls_active",
            "Calls in the ACD node"
        )?)
        .set(f.calls.len() as i64);
    }
    if let Some(n) = &s.acd {
        let dropped = reg!(IntCounterVec::new(
            Opts::new(
                "callfabric_acd_sip_datagrams_dropped_total",
                "SIP datagrams the ACD node dropped before its core: oversize, unparsable, or by \
                 the kernel at its listener's full receive buffer (SO_RXQ_OVFL)"
            ),
            &["reason"]
        )?);
        count_drops(&dropped, &n.transport_stats());
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A listener's datagrams dropped before its core, by reason (gateway and ACD node alike).
fn count_drops(dropped: &IntCounterVec, ts: &gateway::transport::Stats) {
    for (k, v) in [
        ("oversize", ts.udp_too_large),
        ("unparsable", ts.udp_bad),
        ("socket_full", ts.udp_kernel_drops),
    ] {
        dropped.with_label_values(&[k]).inc_by(v);
    }
}

/// One word for a member's state (wallboard and metrics).
pub(super) fn member_state(a: &acd::engine::AgentView) -> &'static str {
    if a.paused.is_some() {
        "paused"
    } else if a.ringing {
        "ringing"
    } else if a.wrapup {
        "wrapup"
    } else if a.available {
        "available"
    } else {
        match a.state {
            statebus::DeviceState::InUse
            | statebus::DeviceState::Busy
            | statebus::DeviceState::OnHold
            | statebus::DeviceState::RingInUse => "in_call",
            statebus::DeviceState::Ringing => "ringing",
            _ => "unavailable",
        }
    }
}

pub(super) async fn metrics(State(s): State<Sources>) -> impl IntoResponse {
    let floor = match &s.acd {
        Some(n) => n.floor().await,
        None => None,
    };
    match gather(&s, floor.as_ref()) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("metrics: {e}\n"),
        ),
    }
}
