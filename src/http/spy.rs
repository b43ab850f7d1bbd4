//! `POST /admin/calls/{call}/spy` (issue 13): a supervisor listens to, whispers to or barges
//! into gateway call `{call}`. Body `{"supervisor": "2001", "mode": "listen|whisper|barge"}`
//! (optional `"agent"`: the device that hears a whisper when it is the calling party). The
//! gateway calls the supervisor's phone and mixes it in once answered (`202`, the phone is
//! ringing); errors are `{"error": "…"}`: 400 bad body or mode, 403 not a supervisor, 404
//! unknown call (or no gateway), 409 call not answered / supervisor not registered or in the
//! call, 503 no capacity.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gateway::server::{SpyMode, SpyOrder, SpyRefused};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{Admin, ApiError};
use super::Sources;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpyBody {
    supervisor: String,
    mode: String,
    agent: Option<String>,
}

/// Longest device user name accepted.
const MAX_USER: usize = 64;

/// The order in `POST /admin/calls/{call}/spy`, or what is wrong with it.
pub(super) fn parse(call: &str, body: &str) -> Result<SpyOrder, String> {
    let call: u64 = call
        .parse()
        .map_err(|_| format!("call {call:?}: a call number from GET /admin/calls"))?;
    let b: SpyBody = serde_json::from_str(body).map_err(|e| format!("body: {e}"))?;
    let mode = SpyMode::parse(&b.mode)
        .ok_or_else(|| format!("mode {:?}: listen, whisper or barge", b.mode))?;
    for (what, v) in [
        ("supervisor", Some(&b.supervisor)),
        ("agent", b.agent.as_ref()),
    ] {
        let Some(v) = v else { continue };
        if v.is_empty()
            || v.len() > MAX_USER
            || v.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            return Err(format!(
                "{what} {v:?}: a device user name (1 to {MAX_USER} bytes, no white space)"
            ));
        }
    }
    Ok(SpyOrder {
        call,
        supervisor: b.supervisor,
        mode,
        agent: b.agent,
    })
}

/// The HTTP status of a refusal.
pub(super) fn status(e: &SpyRefused) -> StatusCode {
    match e {
        SpyRefused::NotSupervisor(_) => StatusCode::FORBIDDEN,
        SpyRefused::UnknownCall(_) | SpyRefused::UnknownDevice(_) => StatusCode::NOT_FOUND,
        SpyRefused::NotAParty { .. } => StatusCode::BAD_REQUEST,
        SpyRefused::NotAnswered(_) | SpyRefused::OwnCall(_) | SpyRefused::NotRegistered(_) => {
            StatusCode::CONFLICT
        }
        SpyRefused::TooMany | SpyRefused::NoPorts | SpyRefused::Send(_) | SpyRefused::Stopped => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

pub(super) async fn spy(
    _: Admin,
    State(s): State<Sources>,
    Path(call): Path<String>,
    body: String,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let order = parse(&call, &body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let gw = s
        .gateway
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no gateway in this process".into()))?;
    match gw.spy(order).await {
        Ok(c) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "ok": true,
                "call": c.call,
                "supervisor": c.supervisor,
                "mode": c.mode.as_str(),
                "calling": c.contact,
                "call_id": c.call_id,
            })),
        )),
        Err(e) => Err(ApiError(status(&e), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spy_orders_are_read_and_checked() {
        let o = parse("7", r#"{"supervisor": "2001", "mode": "Whisper"}"#).expect("ok");
        assert_eq!(
            o,
            SpyOrder {
                call: 7,
                supervisor: "2001".into(),
                mode: SpyMode::Whisper,
                agent: None,
            }
        );
        let o = parse(
            "7",
            r#"{"supervisor": "2001", "mode": "barge", "agent": "1002"}"#,
        )
        .expect("ok");
        assert_eq!((o.mode, o.agent.as_deref()), (SpyMode::Barge, Some("1002")));
        let e = parse("7", r#"{"supervisor": "2001", "mode": "snoop"}"#).expect_err("mode");
        assert!(e.contains("listen, whisper or barge"), "{e}");
        let e = parse("x", r#"{"supervisor": "2001", "mode": "listen"}"#).expect_err("call");
        assert!(e.contains("call \"x\""), "{e}");
        let e = parse("7", r#"{"mode": "listen"}"#).expect_err("no supervisor");
        assert!(e.contains("supervisor"), "{e}");
        let e = parse("7", r#"{"supervisor": "a b", "mode": "listen"}"#).expect_err("space");
        assert!(e.contains("supervisor \"a b\""), "{e}");
        let e = parse("7", r#"{"supervisor": "2001", "mode": "listen", "x": 1}"#)
            .expect_err("unknown field");
        assert!(e.contains("unknown field"), "{e}");
        assert!(parse("7", "not json").is_err());
    }

    #[test]
    fn refusals_map_to_http_codes() {
        assert_eq!(
            status(&SpyRefused::NotSupervisor("1".into())),
            StatusCode::FORBIDDEN
        );
        assert_eq!(status(&SpyRefused::UnknownCall(3)), StatusCode::NOT_FOUND);
        assert_eq!(status(&SpyRefused::NotAnswered(3)), StatusCode::CONFLICT);
        assert_eq!(
            status(&SpyRefused::NotRegistered("1".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(&SpyRefused::TooMany),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
