//! Benchmark: NOTIFYs per second fanned out to N subscribed phones after one MWI change.
//!
//! ```text
//! cargo run --release -p integration --bin mwi_bench -- [--rounds 5] [N…]   (default N: 100 500 1000)
//! ```
//!
//! The gateway runs in-process on the in-process bus (`LocalBus`): N devices whose mailbox is
//! `1000@default`, and N phones (a UDP socket and a task each) that SUBSCRIBE to
//! `message-summary` with digest authentication (407) and answer every NOTIFY with 200. Each
//! round publishes one new count for the mailbox on the bus and times until every phone has
//! the NOTIFY carrying it: the rate is N over the time to the last one; the latency is per
//! phone from the publish. The fabric's own delivery (XMPP) is not included: see
//! `statebus_bench` for publish → notify over Prosody and ejabberd.

use anyhow::{bail, Context, Result};
use gateway::devices::{DeviceRecord, DeviceStore};
use gateway::registrar::client::{answer_challenge, ClientCredentials};
use gateway::server::Gateway;
use sip_core::message::{self, SipMessage};
use statebus::{Bus, Eid, LocalBus, Mwi};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const FIRST_USER: u32 = 1000;
const MAILBOX: &str = "1000";

/// What a phone reports: its index, when, and the `new` count of the NOTIFY it got.
type Report = (usize, Instant, u32);

async fn phone(i: usize, gw: SocketAddr, reports: mpsc::UnboundedSender<Report>) -> Result<()> {
    let user = (FIRST_USER + i as u32).to_string();
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let local = sock.local_addr()?;
    let uri = format!("sip:{user}@bench");
    let call = format!("mwi-{i}-{}", rand::random::<u32>());
    let creds = ClientCredentials {
        username: user.clone(),
        password: format!("pw{user}"),
    };
    let subscribe = |cseq: u32, auth: &str| {
        format!(
            "SUBSCRIBE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{b:016x};rport\r\n\
             From: <{uri}>;tag=p{i}\r\nTo: <{uri}>\r\nCall-ID: {call}\r\nCSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{user}@{local}>\r\nMax-Forwards: 70\r\nEvent: message-summary\r\n\
             Accept: application/simple-message-summary\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n",
            b = rand::random::<u64>()
        )
    };
    // SUBSCRIBE is retransmitted every second until answered (a burst of phones may overflow
    // the gateway's socket buffer).
    let mut pending = Some(subscribe(1, ""));
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(s) = &pending {
            sock.send_to(s.as_bytes(), gw).await?;
        }
        let wait = if pending.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::MAX
        };
        let Ok(got) = tokio::time::timeout(wait, sock.recv_from(&mut buf)).await else {
            continue;
        };
        let (n, from) = got?;
        let at = Instant::now();
        match message::parse(&buf[..n]) {
            Ok(SipMessage::Response(r)) if r.status_code.code() == 407 => {
                let h = answer_challenge(&r, "SUBSCRIBE", &uri, &creds, "bench", 1)
                    .context("no digest challenge to answer")?;
                pending = Some(subscribe(2, &format!("{h}\r\n")));
            }
            Ok(SipMessage::Response(r)) if r.status_code.code() >= 300 => {
                bail!("phone {user}: SUBSCRIBE refused: {}", r.status_code.code())
            }
            Ok(SipMessage::Response(_)) => pending = None,
            Ok(SipMessage::Request(req)) => {
                pending = None; // a NOTIFY may overtake the 200
                let ok = message::response_for(&req, 200, "OK");
                sock.send_to(&message::serialize_response(&ok), from)
                    .await?;
                let body = String::from_utf8_lossy(&req.body);
                let new = body
                    .split("Voice-Message:")
                    .nth(1)
                    .and_then(|v| v.trim().split('/').next())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(u32::MAX);
                if reports.send((i, at, new)).is_err() {
                    return Ok(());
                }
            }
            Err(e) => bail!("phone {user}: unreadable message: {e}"),
        }
    }
}

/// Waits until every phone reported a NOTIFY with `new`; returns their arrival times.
async fn all_got(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    n: usize,
    new: u32,
) -> Result<Vec<Instant>> {
    let mut got: Vec<Option<Instant>> = vec![None; n];
    let mut left = n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while left > 0 {
        let (i, at, count) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("{left} of {n} phones never got {new}"))?
            .context("phones gone")?;
        if count == new && got[i].is_none() {
            got[i] = Some(at);
            left -= 1;
        }
    }
    Ok(got.into_iter().flatten().collect())
}

async fn run(n: usize, rounds: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let db = format!("sqlite://{}", dir.path().join("mwi.db").display());
    let store = DeviceStore::open(&db).await?;
    for i in 0..n as u32 {
        let user = (FIRST_USER + i).to_string();
        let mut d = DeviceRecord::with_password(&user, "bench", &format!("pw{user}"));
        d.mailbox = format!("{MAILBOX}@default");
        store.upsert(&d).await?;
    }
    let bus = Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 0x0e])));
    let cfg = integration::bench::gateway_config(gw_addr, db);
    let _gw = Gateway::start(cfg, bus.clone()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut phones = Vec::new();
    for i in 0..n {
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await; // paced start
        }
        let tx = tx.clone();
        phones.push(tokio::spawn(async move {
            if let Err(e) = phone(i, gw_addr, tx).await {
                eprintln!("{e:#}");
            }
        }));
    }
    // Everyone subscribed: each has its first NOTIFY (no messages).
    all_got(&mut rx, n, 0).await.context("subscribing")?;
    for round in 1..=rounds {
        let t0 = Instant::now();
        bus.publish_mwi(Mwi::new(MAILBOX, "default", round, 0));
        let mut at: Vec<Duration> = all_got(&mut rx, n, round)
            .await?
            .into_iter()
            .map(|t| t - t0)
            .collect();
        at.sort();
        let last = at[n - 1];
        let pct = |p: f64| at[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
        println!(
            "phones={n} round={round} notifies_per_sec={:.0} last_ms={:.2} p50_ms={:.2} p99_ms={:.2}",
            n as f64 / last.as_secs_f64(),
            last.as_secs_f64() * 1e3,
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
        );
    }
    for p in phones {
        p.abort();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut rounds = 5;
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            n => sizes.push(
                n.parse::<usize>()
                    .with_context(|| format!("{n:?}: not a number"))?,
            ),
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 500, 1000];
    }
    println!(
        "mwi_bench: {} build, in-process bus, rounds={rounds}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for n in sizes {
        run(n, rounds).await?;
    }
    Ok(())
}
