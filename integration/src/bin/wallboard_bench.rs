//! Benchmark: the wallboard's update latency. A `callfabric site` (the `callfabric` binary
//! beside this one: build both with the same profile) with one queue and agent, its wallboard
//! open in headless Chromium (DevTools protocol over a pipe); the agent is paused and unpaused
//! through the admin API N times. Latency: from just before each request is sent to the page's
//! arrival time of the first SSE update showing the new state (both wall clock, one machine),
//! as the page's script records it (`window.updates`). Also: the request alone (its answer)
//! for comparison — the floor of what the page can show.
//!
//! ```text
//! cargo build --release -p callfabric --bin callfabric
//! cargo run --release -p integration --bin wallboard_bench -- [TOGGLES]
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration::chromium::Chromium;
use integration::free_udp_port;
use integration::gateway::{callfabric_binary, GatewayProcess, GatewaySpec};
use serde_json::Value;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn post(addr: &str, path: &str, body: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr)?;
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = String::new();
    c.read_to_string(&mut r)?;
    anyhow::ensure!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
    Ok(())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let toggles: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let mut spec = GatewaySpec::new("bench", &["2001"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 300.0;
    spec.extra = format!(
        "\n[acd]\nudp = \"127.0.0.1:{}\"\nrtp_ports = \"43000-43099\"\n\n[acd.numbers]\n\"800\" = \"support\"\n\n\
         [[acd.queue]]\nname = \"support\"\nmembers = [\"PJSIP/2001\"]\n\n[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        free_udp_port()
    );
    let mut gw = GatewayProcess::start(&callfabric_binary(), spec);
    let addr = gw
        .wait_for(Duration::from_secs(20), "http ready", |l| {
            l.starts_with("http ready ")
        })
        .trim_start_matches("http ready ")
        .to_owned();
    let mut chrome = Chromium::start(gw.dir())?;
    let page = chrome.open(&format!("http://{addr}/wallboard"))?;
    chrome.wait_for(
        &page,
        "document.body.dataset.updates",
        Duration::from_secs(20),
        |v| v.as_str().is_some(),
    )?;
    let (mut lat, mut req) = (Vec::new(), Vec::new());
    for i in 0..toggles {
        let pause = i % 2 == 0;
        let want = if pause { "paused" } else { "unavailable" };
        let path = if pause {
            "/admin/pause"
        } else {
            "/admin/unpause"
        };
        let t0 = epoch_ms();
        let start = Instant::now();
        post(
            &addr,
            path,
            r#"{"interface":"PJSIP/2001","reason":"Bench"}"#,
        )?;
        req.push(start.elapsed().as_secs_f64() * 1000.0);
        let expr = format!(
            "(window.updates.find(u => u.at >= {t0} && u.agents['PJSIP/2001'] === '{want}') || {{}}).at"
        );
        let at = chrome.wait_for(&page, &expr, Duration::from_secs(10), Value::is_number)?;
        lat.push(at.as_f64().unwrap_or(f64::NAN) - t0);
    }
    println!("wallboard_bench: {toggles} pause/unpause toggles through the admin API");
    println!(
        "request -> page update: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.9),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    println!(
        "request alone (answered): p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut req, 0.5),
        pct(&mut req, 0.99)
    );
    Ok(())
}
