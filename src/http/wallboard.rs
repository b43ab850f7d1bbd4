//! The live wallboard: `GET /wallboard` is one self-contained page; `GET /wallboard/events` is
//! a server-sent event stream of the floor (per queue: callers waiting, longest wait, service
//! level, agents by state with pause reason and time in state). The stream sends the floor at
//! once, then whenever the ACD node signals a change (device state, command, queue_log line),
//! at most every 50 ms, and at least every second (times in state tick).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::Stream;
use serde_json::json;

use super::Sources;

const PAGE: &str = include_str!("wallboard.html");

/// Pushes no faster than this (a burst of changes is one update).
const MIN_GAP: Duration = Duration::from_millis(50);
/// Pushes at least this often.
const MAX_GAP: Duration = Duration::from_secs(1);
/// Event streams open at once; more are refused (503) and counted.
const MAX_STREAMS: u64 = 64;

/// One open stream, counted while it lives.
struct Open(std::sync::Arc<super::metrics::Totals>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .wallboard_streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The floor as the page reads it: the admin API's view plus each agent's one-word state.
async fn snapshot(s: &Sources) -> Option<String> {
    let node = s.acd.as_ref()?;
    let f = node.floor().await?;
    let mut v = super::admin::floor_json(&f);
    if let Some(qs) = v["queues"].as_array_mut() {
        for (qj, q) in qs.iter_mut().zip(&f.queues) {
            if let Some(agents) = qj["agents"].as_array_mut() {
                for (aj, a) in agents.iter_mut().zip(&q.agents) {
                    aj["board_state"] = json!(super::metrics::member_state(a));
                }
            }
        }
    }
    v["sent_ms"] = json!(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0));
    Some(v.to_string())
}

pub(super) async fn events(State(s): State<Sources>) -> Response {
    let Some(node) = s.acd.clone() else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            "no ACD node in this process",
        )
            .into_response();
    };
    use std::sync::atomic::Ordering;
    let t = s.metrics.clone();
    if t.wallboard_streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        t.wallboard_streams.fetch_sub(1, Ordering::Relaxed);
        t.wallboard_refused.fetch_add(1, Ordering::Relaxed);
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many wallboards open",
        )
            .into_response();
    }
    let open = Open(t);
    let changes = node.changes();
    let stream = futures::stream::unfold(
        (s, changes, true, open),
        |(s, mut changes, first, open)| async move {
            if !first {
                // At most one push per MIN_GAP (a change meanwhile is kept by the watch), then
                // the next change or the periodic tick.
                tokio::time::sleep(MIN_GAP).await;
                let _ = tokio::time::timeout(MAX_GAP, changes.changed()).await;
                changes.borrow_and_update();
            }
            let data = snapshot(&s).await?;
            let ev: Result<Event, Infallible> = Ok(Event::default().event("floor").data(data));
            Some((ev, (s, changes, false, open)))
        },
    );
    sse(stream)
}

fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
