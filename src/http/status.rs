//! The status API for supervisors, wallboards and reports (axum, JSON, read-only):
//!
//! * `GET /devices`: every device's aggregate state on the fabric;
//! * `GET /calls`: calls in progress on this gateway: caller, number dialled, the devices on
//!   both sides, and the relay's RTP figures for both legs (packets, bytes, RFC 3550 loss and
//!   jitter, the latched source);
//! * `GET /queues`: per-queue and per-member statistics of this ACD node (answered, abandoned,
//!   average wait, service level, members' calls and availability);
//! * `GET /security/bans`: the gateway's bans in force (source, seconds left, failures, why,
//!   last user tried, requests dropped) and the defence's counters.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::Sources;

pub(super) async fn devices(State(s): State<Sources>) -> Json<Value> {
    let snap = s.bus.snapshot();
    Json(json!(snap
        .devices
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.as_wire())))
        .collect::<serde_json::Map<_, _>>()))
}

pub(super) fn leg(st: &media::LegStats) -> Value {
    json!({
        "rtp_packets_in": st.rtp_packets_in,
        "rtp_bytes_in": st.rtp_bytes_in,
        "rtp_packets_out": st.rtp_packets_out,
        "rtp_bytes_out": st.rtp_bytes_out,
        "rtcp_packets_in": st.rtcp_packets_in,
        "rtcp_packets_out": st.rtcp_packets_out,
        "expected": st.expected,
        "lost": st.lost,
        "jitter_ms": st.jitter_ms,
        "latched_source": st.latched_source.map(|a| a.to_string()),
        "payload_types": st.payload_types_seen,
    })
}

pub(super) async fn calls(State(s): State<Sources>) -> Json<Value> {
    let Some(gw) = &s.gateway else {
        return Json(json!([]));
    };
    Json(json!(gw
        .calls()
        .iter()
        .map(|c| json!({
            "call": c.call,
            "caller": c.parties.caller,
            "dialled": c.parties.dialled,
            "caller_device": c.parties.caller_device,
            "callee_device": c.parties.callee_device,
            "a": leg(&c.a),
            "b": leg(&c.b),
        }))
        .collect::<Vec<_>>()))
}

pub(super) async fn queues(State(s): State<Sources>) -> Json<Value> {
    let Some(node) = &s.acd else {
        return Json(json!([]));
    };
    let reports = node.stats().await.unwrap_or_default();
    Json(json!(reports
        .iter()
        .map(|r| {
            let st = &r.stats;
            let avg_wait = if st.answered > 0 {
                st.total_holdtime.as_secs_f64() / st.answered as f64
            } else {
                0.0
            };
            let service_level = if st.answered > 0 {
                100.0 * st.answered_within_sl as f64 / st.answered as f64
            } else {
                0.0
            };
            json!({
                "queue": r.queue,
                "waiting": r.waiting,
                "joined": st.joined,
                "answered": st.answered,
                "abandoned": st.abandoned,
                "timed_out": st.timed_out,
                "completed": st.completed,
                "average_wait_secs": avg_wait,
                "service_level_pct": service_level,
                "holdtime_weighted_secs": st.holdtime_weighted_secs,
                "members": r.members.iter().map(|(iface, m, available)| json!({
                    "interface": iface,
                    "name": m.name,
                    "penalty": m.penalty,
                    "paused": m.paused,
                    "dynamic": m.dynamic,
                    "answered": m.answered,
                    "calls": m.calls,
                    "talk_time_secs": m.talk_time.as_secs_f64(),
                    "available": available,
                })).collect::<Vec<_>>(),
            })
        })
        .collect::<Vec<_>>()))
}

/// `GET /security/bans`: `{"bans": [...], "stats": {...}}` (empty without a gateway).
pub(super) async fn security_bans(State(s): State<Sources>) -> Json<Value> {
    let Some(gw) = &s.gateway else {
        return Json(json!({ "bans": [], "stats": null }));
    };
    let st = gw.security_stats();
    Json(json!({
        "bans": gw.bans().iter().map(|b| json!({
            "source": b.ip.to_string(),
            "remaining_secs": b.remaining.as_secs(),
            "failures": b.failures,
            "why": b.why,
            "user": b.user,
            "dropped": b.dropped,
        })).collect::<Vec<_>>(),
        "stats": {
            "failures": st.failures,
            "bans": st.bans,
            "dropped_banned": st.dropped_banned,
            "challenges_dropped": st.challenges_dropped,
        },
    }))
}
