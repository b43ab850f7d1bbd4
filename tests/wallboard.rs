//! The live wallboard in headless Chromium through the real binary (`callfabric site`): the
//! page served by the node, pushed by SSE, shows a phone's state change (registration: the
//! agent becomes available) and a pause with its reason within 1 s.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration::chromium::Chromium;
use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::answering_phone;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "wallboard-token-0123456789";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Epoch ms of the gateway's log line `device state key=<key> state=<state>` (its UTC
/// timestamp, microseconds): the moment the gateway changed the device's state.
fn state_changed_at(stderr: &Path, key: &str, state: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stderr).ok()?;
    // Without the ANSI colour codes.
    let mut plain = String::with_capacity(text.len());
    let mut esc = false;
    for c in text.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let line = plain.lines().find(|l| {
        l.contains("device state")
            && l.contains(&format!("key={key} "))
            && l.ends_with(&format!("state={state}"))
    })?;
    // 2026-12-06T22:01:28.968703Z
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    Some(integration::clock::epoch_secs(date, time)? * 1000.0)
}

/// The first update the page recorded (arrival time, epoch ms) at or after `since` showing
/// `agent` in `state`.
fn first_update(updates: &Value, since: f64, agent: &str, state: &str) -> Option<f64> {
    updates.as_array()?.iter().find_map(|u| {
        let at = u["at"].as_f64()?;
        (at >= since && u["agents"][agent].as_str() == Some(state)).then_some(at)
    })
}

#[test]
fn wallboard_shows_a_phone_change_within_a_second() {
    let acd_port = free_udp_port();
    let mut spec = GatewaySpec::new("site-a", &["1001", "2001"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 300.0;
    spec.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "42000-42999"
t1_ms = 100

[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
strategy = "ringall"
members = ["PJSIP/2001"]

[http]
listen = "127.0.0.1:0"
token = "{TOKEN}"
"#
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    gw.wait_for(WAIT, "acd ready", |l| l.starts_with("acd ready"));
    let addr = gw
        .wait_for(WAIT, "the http ready line", |l| {
            l.starts_with("http ready ")
        })
        .trim_start_matches("http ready ")
        .to_owned();
    let mut chrome = Chromium::start(gw.dir()).expect("chromium");
    let page = chrome
        .open(&format!("http://{addr}/wallboard"))
        .expect("open the wallboard");
    let row = r#"(document.querySelector('tr[data-agent="PJSIP/2001"]') || {dataset: {}})"#;
    // Loaded and live: the agent is there, unavailable (its phone is not registered).
    chrome
        .wait_for(&page, &format!("{row}.dataset.boardState"), WAIT, |v| {
            v == "unavailable"
        })
        .expect("the wallboard shows the unregistered agent");
    // The open stream is counted (streams are bounded).
    {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(addr.as_str()).expect("connect");
        write!(
            c,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .expect("req");
        let mut r = String::new();
        c.read_to_string(&mut r).expect("metrics");
        assert!(
            r.lines().any(|l| l == "callfabric_wallboard_streams 1"),
            "{r}"
        );
    }
    let figures = chrome
        .eval(
            &page,
            "[...document.querySelectorAll('[data-queue=support] [data-figure]')].map(e => e.textContent)",
        )
        .expect("figures");
    let figures: Vec<&str> = figures
        .as_array()
        .expect("figures")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        figures,
        [
            "0Waiting",
            "0:00Longest wait",
            "0 %Service level",
            "0Answered",
            "0Abandoned"
        ]
    );

    // The phone registers: the gateway changes its device state (its log line's timestamp),
    // and the page must show the agent available within 1 s of that.
    let registering = epoch_ms();
    let _phone = answering_phone(&mut gw, "2001", "call_uas.xml", 1);
    gw.device("2001", "NOT_INUSE", WAIT);
    let v = chrome
        .wait_for(&page, "window.updates", WAIT, |u| {
            first_update(u, registering, "PJSIP/2001", "available").is_some()
        })
        .expect("the page shows the agent available");
    let shown = first_update(&v, registering, "PJSIP/2001", "available").expect("update");
    let state_text = chrome
        .eval(
            &page,
            &format!("{row}.querySelector('td.state').textContent"),
        )
        .expect("text");
    assert_eq!(state_text, "Available");
    let changed = state_changed_at(&gw.dir().join("gateway.stderr"), "PJSIP/2001", "NOT_INUSE")
        .expect("the gateway's `device state` log line");
    println!(
        "wallboard: device state changed -> page {:.0} ms; REGISTER sent -> page {:.0} ms",
        shown - changed,
        shown - registering
    );
    assert!(
        (0.0..=1000.0).contains(&(shown - changed)),
        "the page showed the change {:.0} ms after the gateway made it",
        shown - changed
    );

    // A pause with a reason (admin API) shows within 1 s of the request.
    let before = epoch_ms();
    let t0 = Instant::now();
    {
        use std::io::{Read as _, Write as _};
        let body = r#"{"interface":"PJSIP/2001","reason":"Lunch"}"#;
        let mut c = std::net::TcpStream::connect(addr.as_str()).expect("connect");
        write!(
            c,
            "POST /admin/pause HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        let mut r = String::new();
        c.read_to_string(&mut r).expect("response");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let text = chrome
        .wait_for(
            &page,
            &format!("{row}.querySelector('td.state').textContent"),
            WAIT,
            |v| v == "Paused: Lunch",
        )
        .expect("the page shows the pause");
    assert_eq!(text, "Paused: Lunch");
    let v = chrome.eval(&page, "window.updates").expect("updates");
    let shown = first_update(&v, before, "PJSIP/2001", "paused").expect("update");
    println!(
        "wallboard: pause request -> page {:.0} ms (polled {:?})",
        shown - before,
        t0.elapsed()
    );
    assert!(
        shown - before <= 1000.0,
        "the page showed the pause {:.0} ms after the request",
        shown - before
    );
}
