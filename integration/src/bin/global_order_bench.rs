//! One queue over several ACD nodes (issue 15): order inversions per 10,000 callers under
//! randomized arrival and fabric delay, and agent free → offer latency with the queue on one
//! node against spread over two. A pure simulation in virtual time (`acd::global_sim`: real
//! queue engines, a simulated fabric and gateway arbiter), so its figures depend on the seed
//! and the parameters only, not on the machine or the build profile.
//!
//! `cargo run -p integration --bin global_order_bench [callers] [seeds]` (default 10000, 5).
//!
//! `global_order_bench live [callers] [rounds]` (default 20, 2) measures the same latency
//! through the real processes instead: Prosody, a `callfabric gateway` and one or two
//! `callfabric acd` nodes on loopback (build `callfabric` first, same profile); the agent's
//! phone is a minimal UAS in this process, so the time from its BYE (the agent free) to the
//! next INVITE at its socket is taken on one clock. After each run, one fabric hop is
//! measured on the same server (the raw floor, `integration::raw_xmpp::Floor`), for the
//! target "two nodes ≤ 1.2 × one node + one hop".

use std::time::Duration;

use acd::global_sim::{run, SimParams};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("live") {
        args.next();
        let callers = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
        let rounds = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
        return live::run(callers, rounds);
    }
    let callers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let lan = (Duration::from_millis(1), Duration::from_millis(60));
    let wan = (Duration::from_millis(40), Duration::from_millis(150));
    println!("global_order_bench: {callers} callers per run, seeds 1..={seeds}");
    println!(
        "{:<44} {:>8} {:>10} {:>9} {:>10} {:>10}",
        "scenario", "agents", "inversions", "per 10k", "refused", "connected"
    );
    let scenarios: Vec<(&str, SimParams)> = vec![
        (
            "2 nodes, LAN fabric 1-60 ms, load 0.8",
            SimParams {
                fabric_delay: lan,
                mean_gap: Duration::from_millis(1500),
                ..SimParams::default()
            },
        ),
        (
            "2 nodes, LAN fabric, load 0.4",
            SimParams {
                fabric_delay: lan,
                mean_gap: Duration::from_millis(3000),
                ..SimParams::default()
            },
        ),
        (
            "2 nodes, WAN fabric 40-150 ms, load 0.8",
            SimParams {
                fabric_delay: wan,
                mean_gap: Duration::from_millis(1500),
                ..SimParams::default()
            },
        ),
        (
            "3 nodes, 2 agents, 3 priorities, WAN",
            SimParams {
                nodes: 3,
                agents: 2,
                priorities: 3,
                fabric_delay: wan,
                mean_gap: Duration::from_millis(800),
                ..SimParams::default()
            },
        ),
        (
            "2 nodes, slow fabric 100-400 ms, settle 450 ms",
            SimParams {
                fabric_delay: (Duration::from_millis(100), Duration::from_millis(400)),
                mean_gap: Duration::from_millis(1000),
                talk: (Duration::from_millis(50), Duration::from_millis(300)),
                settle: Duration::from_millis(450),
                ..SimParams::default()
            },
        ),
        (
            "  same, NO settle time (control)",
            SimParams {
                fabric_delay: (Duration::from_millis(100), Duration::from_millis(400)),
                mean_gap: Duration::from_millis(1000),
                talk: (Duration::from_millis(50), Duration::from_millis(300)),
                settle: Duration::ZERO,
                ..SimParams::default()
            },
        ),
    ];
    for (name, base) in &scenarios {
        let (mut inv, mut refused, mut connected) = (0u64, 0u64, 0usize);
        for seed in 1..=seeds {
            let r = run(&SimParams {
                callers,
                seed,
                ..base.clone()
            });
            inv += r.inversions;
            refused += r.refused;
            connected += r.connected;
        }
        let total = callers as f64 * seeds as f64;
        println!(
            "{:<44} {:>8} {:>10} {:>9.2} {:>10} {:>10}",
            name,
            base.agents,
            inv,
            inv as f64 * 10_000.0 / total,
            refused,
            connected
        );
    }

    // Agent free → the next offer at the gateway, callers waiting: one node vs two.
    println!();
    println!("agent free -> offer (callers waiting), virtual time:");
    for (fabric, delay) in [("LAN 1-60 ms", lan), ("WAN 40-150 ms", wan)] {
        let mut p50 = Vec::new();
        for nodes in [1usize, 2] {
            let mut all = Vec::new();
            for seed in 1..=seeds {
                let r = run(&SimParams {
                    nodes,
                    callers,
                    seed,
                    fabric_delay: delay,
                    mean_gap: Duration::from_millis(1300),
                    ..SimParams::default()
                });
                all.extend(r.free_to_offer);
            }
            let (a, b, c) = (pct(&mut all, 0.5), pct(&mut all, 0.99), pct(&mut all, 1.0));
            println!(
                "  {fabric:<14} queue on {nodes} node(s): n={:<6} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
                all.len(),
                ms(a),
                ms(b),
                ms(c)
            );
            p50.push(a);
        }
        let hop = (delay.0 + delay.1) / 2;
        let bound = p50[0].mul_f64(1.2) + hop;
        println!(
            "  {fabric:<14} two/one p50 = {:.2}x; target two <= 1.2 x one + one hop ({:.1} ms): {}",
            ms(p50[1]) / ms(p50[0]).max(1e-9),
            ms(bound),
            if p50[1] <= bound { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

/// `live`: agent free → offer at the agent's phone through the real processes (Prosody, a
/// `callfabric gateway`, one or two `callfabric acd` nodes on loopback). See `live::run`.
mod live {
    use std::net::UdpSocket;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use integration::free_udp_port;
    use integration::gateway::{callfabric_binary, GatewayProcess, GatewaySpec};
    use integration::phones::{caller, scenario};
    use integration::raw_xmpp::{bound_session, Floor};
    use integration::sipp::{run_scenario, SippOpts, SippProcess};
    use integration::site::Bus;
    use integration::xmpp_server::{ServerKind, XmppServer};

    const WAIT: Duration = Duration::from_secs(60);
    /// How long the agent talks to each caller before hanging up.
    const TALK: Duration = Duration::from_millis(200);

    /// The gateway (callers 1001–1010 dial 800 or 801, agent 2001) and one node serving both
    /// numbers (`two == false`) or two nodes, 800 at acd-1 and 801 at acd-2, one queue.
    struct Fabric {
        _xmpp: XmppServer,
        gw: GatewayProcess,
        nodes: Vec<GatewayProcess>,
    }

    fn fabric(two: bool) -> anyhow::Result<Fabric> {
        let binary = callfabric_binary();
        let xmpp = XmppServer::start(
            ServerKind::Prosody,
            &["gw-a", "acd-1", "acd-2", "raw-pub", "raw-sub"],
            "secret",
        )?;
        let bus = Bus::new(5.0, &["gw-a", "acd-1", "acd-2"]);
        let (acd1, acd2, gw_port) = (free_udp_port(), free_udp_port(), free_udp_port());
        let mut devices: Vec<String> = (1001..=1010).map(|u| u.to_string()).collect();
        devices.push("2001".into());
        let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
        let mut spec = GatewaySpec::new("gw-a", &devices);
        spec.qualify_interval_secs = 300.0;
        spec.udp_port = Some(gw_port);
        spec.statebus = bus.section(&xmpp, "gw-a");
        spec.node_extra = format!("sip_address = \"127.0.0.1:{gw_port}\"");
        let acd_801 = if two { acd2 } else { acd1 };
        spec.extra = format!(
            "media_timeout_secs = 0\n\
             \n[[gateway.trunk]]\nname = \"acd1\"\naddress = \"127.0.0.1:{acd1}\"\nprefixes = [\"800\"]\n\
             \n[[gateway.trunk]]\nname = \"acd2\"\naddress = \"127.0.0.1:{acd_801}\"\nprefixes = [\"801\"]\n"
        );
        let gw = GatewayProcess::start(&binary, spec);
        let node = |name: &str, port: u16, numbers: &str, rtp: &str| {
            let mut s = GatewaySpec::new(name, &[]);
            s.command = "acd".into();
            s.statebus = bus.section(&xmpp, name);
            s.extra = format!(
                "\n[acd]\nudp = \"127.0.0.1:{port}\"\nrtp_ports = \"{rtp}\"\nt1_ms = 100\n\
                 announce_frequency_secs = 0\n\n[acd.numbers]\n{numbers}\n\n\
                 [[acd.gateway]]\nname = \"gw-a\"\naddress = \"127.0.0.1:{gw_port}\"\n\n\
                 [[acd.queue]]\nname = \"support\"\nstrategy = \"leastrecent\"\ntimeout = 10\n\
                 retry = 1\nringinuse = false\nmembers = [\"PJSIP/2001\"]\n"
            );
            GatewayProcess::start(&binary, s)
        };
        let nodes = if two {
            vec![
                node("acd-1", acd1, "\"800\" = \"support\"", "49000-49499"),
                node("acd-2", acd2, "\"801\" = \"support\"", "49500-49999"),
            ]
        } else {
            vec![node(
                "acd-1",
                acd1,
                "\"800\" = \"support\"\n\"801\" = \"support\"",
                "49000-49499",
            )]
        };
        Ok(Fabric {
            _xmpp: xmpp,
            gw,
            nodes,
        })
    }

    /// One header's value (the first), case-insensitive name.
    fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
        msg.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The agent's phone: a minimal UAS on `sock` that answers each INVITE, waits for the ACK,
    /// talks [`TALK`] and hangs up (BYE); returns, per offer after the first, the time from
    /// its BYE (the agent free) to the next INVITE's arrival.
    fn agent(sock: &UdpSocket, offers: usize) -> anyhow::Result<Vec<Duration>> {
        let me = sock.local_addr()?;
        let mut buf = vec![0u8; 65_535];
        let mut out = Vec::new();
        let mut freed: Option<Instant> = None;
        for n in 0..offers {
            // The INVITE.
            let deadline = Instant::now() + WAIT;
            let (invite, gw) = loop {
                anyhow::ensure!(Instant::now() < deadline, "no INVITE {n}");
                sock.set_read_timeout(Some(Duration::from_millis(500)))?;
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
                if msg.starts_with("INVITE ") {
                    break (msg, from);
                }
            };
            if let Some(t) = freed.take() {
                out.push(t.elapsed());
            }
            let vias: Vec<&str> = invite
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
                .collect();
            let from = header(&invite, "From").unwrap_or_default().to_owned();
            let to = format!("{};tag=agent{n}", header(&invite, "To").unwrap_or_default());
            let call_id = header(&invite, "Call-ID").unwrap_or_default().to_owned();
            let cseq = header(&invite, "CSeq").unwrap_or_default().to_owned();
            let contact = header(&invite, "Contact").unwrap_or_default();
            let target = contact
                .trim_start_matches('<')
                .split(['>', ';'])
                .next()
                .unwrap_or_default()
                .to_owned();
            let pt = invite
                .lines()
                .find(|l| l.starts_with("m=audio"))
                .and_then(|l| l.split_whitespace().nth(3))
                .unwrap_or("0")
                .to_owned();
            let sdp = format!(
                "v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio {} RTP/AVP {pt}\r\n",
                me.port() + 2
            );
            let ok = format!(
                "SIP/2.0 200 OK\r\n{}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq}\r\nContact: <sip:2001@{me}>\r\nContent-Type: application/sdp\r\n\
                 Content-Length: {}\r\n\r\n{sdp}",
                vias.join("\r\n"),
                sdp.len()
            );
            // 200 until the ACK.
            let deadline = Instant::now() + WAIT;
            'ack: loop {
                anyhow::ensure!(Instant::now() < deadline, "no ACK {n}");
                sock.send_to(ok.as_bytes(), gw)?;
                sock.set_read_timeout(Some(Duration::from_millis(500)))?;
                while let Ok((len, _)) = sock.recv_from(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..len]);
                    if msg.starts_with("ACK ") && header(&msg, "Call-ID") == Some(&call_id) {
                        break 'ack;
                    }
                }
            }
            std::thread::sleep(TALK);
            // BYE until its 200: the agent is free from the first BYE on.
            let bye = format!(
                "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-agent-bye-{n}\r\n\
                 Max-Forwards: 70\r\nFrom: {to}\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
                 CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
            );
            freed = Some(Instant::now());
            let deadline = Instant::now() + WAIT;
            'ok: loop {
                anyhow::ensure!(Instant::now() < deadline, "no 200 to BYE {n}");
                sock.send_to(bye.as_bytes(), gw)?;
                sock.set_read_timeout(Some(Duration::from_millis(500)))?;
                while let Ok((len, _)) = sock.recv_from(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..len]);
                    if msg.starts_with("SIP/2.0 200") && header(&msg, "CSeq") == Some("1 BYE") {
                        break 'ok;
                    }
                }
            }
        }
        Ok(out)
    }

    /// One fabric hop on the run's own server, measured right after it: the raw floor
    /// (`integration::raw_xmpp::Floor`), 60 publish → notify rounds, the first 10 not kept.
    fn hops(xmpp: &XmppServer) -> anyhow::Result<Vec<Duration>> {
        let session = |user: &str| {
            bound_session(
                xmpp.c2s_addr(),
                xmpp.domain(),
                user,
                "secret",
                "bench",
                WAIT,
            )
        };
        let mut floor = Floor::new(
            session("raw-pub")?,
            session("raw-sub")?,
            xmpp.pubsub_service(),
            "bench_hop",
            &format!("raw-sub@{}", xmpp.domain()),
            WAIT,
        )?;
        let mut out = Vec::new();
        for i in 0..60 {
            let d = floor.round_trip(i)?;
            if i >= 10 {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// One run: `callers` callers queued alternately on 800 and 801 (one node, or two), the
    /// agent registered last; the latencies of every offer after the first, and the fabric
    /// hops measured on the same server after it.
    fn once(two: bool, callers: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let mut f = fabric(two)?;
        for n in f.nodes.iter_mut() {
            n.wait_for(WAIT, "2001 unavailable", |l| {
                l == "DEVICE PJSIP/2001 UNAVAILABLE"
            });
        }
        let mut sipps = Vec::new();
        for i in 0..callers {
            let dial = if i % 2 == 0 { "800" } else { "801" };
            let user = (1001 + i / 2).to_string();
            sipps.push(SippProcess::spawn(
                &scenario("call_uac_feature.xml"),
                Some(f.gw.udp),
                &SippOpts {
                    service: Some(user.clone()),
                    auth_user: Some(user.clone()),
                    timeout: Duration::from_secs(300),
                    ..caller(&user, dial)
                },
            )?);
            let node = if two { i % 2 } else { 0 };
            f.nodes[node].wait_for(WAIT, "ENTERQUEUE", |l| l.contains("|ENTERQUEUE|"));
        }
        for n in f.nodes.iter_mut() {
            n.wait_for(WAIT, "all callers known", |l| {
                l == format!("WAITING support {callers}")
            });
        }
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let port = sock.local_addr()?.port();
        let reg = run_scenario(
            &scenario("register_contact.xml"),
            f.gw.udp,
            SippOpts {
                keys: vec![("contact_port".into(), port.to_string())],
                ..SippOpts::user("2001", "secret")
            },
        )?;
        anyhow::ensure!(reg.passed(), "registration: {}", reg.describe());
        let lat = agent(&sock, callers)?;
        for mut s in sipps {
            let _ = s.wait();
        }
        Ok((lat, hops(&f._xmpp)?))
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    fn line(name: &str, v: &mut [Duration]) -> f64 {
        v.sort();
        let p = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
        println!(
            "{name:<34} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            v.len(),
            p(0.5),
            p(0.9),
            p(0.99),
            ms(*v.last().unwrap_or(&Duration::ZERO))
        );
        p(0.5)
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// `live [callers] [rounds]`: rounds of (one node, two nodes), interleaved.
    pub fn run(callers: usize, rounds: usize) -> anyhow::Result<()> {
        anyhow::ensure!((2..=20).contains(&callers), "callers: 2 to 20");
        anyhow::ensure!(
            Path::new(&callfabric_binary()).exists(),
            "build callfabric first"
        );
        println!(
            "global_order_bench live: agent free (its BYE) -> next offer's INVITE at its phone; \
             {callers} callers per run, {rounds} rounds, talk {TALK:?}"
        );
        let (mut one, mut two, mut hop) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            println!("round {}: load {}", r + 1, loadavg());
            let (lat, h) = once(false, callers)?;
            one.extend(lat);
            hop.extend(h);
            let (lat, h) = once(true, callers)?;
            two.extend(lat);
            hop.extend(h);
        }
        println!(
            "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "queue", "offers", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        let a = line("on one node", &mut one);
        let b = line("spread over two nodes", &mut two);
        let h = line("one fabric hop (raw floor)", &mut hop);
        let bound = 1.2 * a + h;
        println!(
            "two / one (p50): {:.2}; target two <= 1.2 x one + one hop = {bound:.1} ms: {}; load after: {}",
            b / a.max(1e-9),
            if b <= bound { "met" } else { "NOT met" },
            loadavg()
        );
        Ok(())
    }
}
