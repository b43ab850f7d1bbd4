//! End to end, forking (issue 11 item 3): a device registered from two places rings on both.
//! The callee 1002 has a real phone (a SIPp UAS that answers calls and OPTIONS, echoing RTP)
//! and a second, newer contact played by the test itself on a raw UDP socket: one that rings
//! and is then cancelled, one that never answers, one that fails qualify. The caller is a SIPp
//! phone streaming 4 s of audio (the call must be answered, or its scenario fails).

use std::net::UdpSocket;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller, scenario, uac_scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};

const STATE_TIMEOUT: Duration = Duration::from_secs(10);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

fn spec(name: &str, qualify_secs: f64) -> GatewaySpec {
    let mut s = GatewaySpec::new(name, &["1001", "1002"]);
    s.qualify_interval_secs = qualify_secs;
    s
}

/// Registers `user` with a Contact on `port` of 127.0.0.1.
fn register_contact(gw: &GatewayProcess, user: &str, port: u16) {
    let out = run_scenario(
        &scenario("register_contact.xml"),
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), port.to_string())],
            ..SippOpts::user(user, "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &out, "registration of a contact");
}

/// The real phone of 1002: answers one call (180, 200, echo, BYE). (A SIPp UAS cannot answer
/// OPTIONS outside its scenario: `-oocsf` is refused in server mode.)
fn live_phone(gw: &mut GatewayProcess) -> SippProcess {
    let sip_port = free_udp_port();
    let media_port = integration::free_media_port();
    let uas = SippProcess::spawn(
        &scenario("call_uas.xml"),
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls: 1,
            timeout: Duration::from_secs(60),
            extra_args: vec!["-rtp_echo".into(), "-mp".into(), media_port.to_string()],
            ..SippOpts::default()
        },
    )
    .expect("start the answering SIPp");
    register_contact(gw, "1002", sip_port);
    gw.device("1002", "NOT_INUSE", STATE_TIMEOUT);
    uas
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// 180 to an INVITE; 200 + 487 to a CANCEL.
    Rings,
    /// Never answers anything.
    Silent,
    /// A phone that answers: 180 then 200 (SDP) to an INVITE, 200 to BYE and OPTIONS.
    Answers,
}

/// The second contact, played by the test on a raw socket: records what it receives
/// (`INVITE <request-uri>`, `CANCEL`, `ACK`, `OPTIONS`).
struct RawContact {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<Mutex<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .collect()
}

/// A response to `req` (its Via, From, Call-ID, CSeq; To with our tag; Contact on `port`).
fn reply(req: &str, status: &str, port: u16) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for v in header(req, "Via") {
        out.push_str(v);
        out.push_str("\r\n");
    }
    for name in ["From", "Call-ID", "CSeq"] {
        for v in header(req, name) {
            out.push_str(v);
            out.push_str("\r\n");
        }
    }
    for v in header(req, "To") {
        out.push_str(v);
        if !v.contains(";tag=") {
            out.push_str(";tag=raw2");
        }
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Contact: <sip:1002@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
    ));
    out
}

/// A 200 with an SDP answer naming `media` as the RTP port.
fn answer(req: &str, port: u16, media: u16) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {media} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    reply(req, "200 OK", port).replace(
        "Content-Length: 0\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n",
            sdp.len()
        ),
    ) + &sdp
}

impl RawContact {
    fn start(behaviour: Behaviour) -> RawContact {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(Mutex::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        // Where an answering contact says it takes RTP (what arrives is dropped).
        let media = UdpSocket::bind("127.0.0.1:0").expect("bind media");
        let thread = std::thread::spawn(move || {
            let media = media.local_addr().map(|a| a.port()).unwrap_or(9);
            let mut buf = vec![0u8; 65536];
            let mut invite: Option<String> = None;
            while !*st2.lock().expect("lock") {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = msg.lines().next().unwrap_or("").to_owned();
                let method = line.split(' ').next().unwrap_or("").to_owned();
                let event = if method == "INVITE" {
                    format!("INVITE {}", line.split(' ').nth(1).unwrap_or(""))
                } else {
                    method.clone()
                };
                s2.lock().expect("lock").push(event);
                if behaviour == Behaviour::Silent {
                    continue;
                }
                let answers: Vec<String> = match method.as_str() {
                    "INVITE" if behaviour == Behaviour::Answers => {
                        vec![reply(&msg, "180 Ringing", port), answer(&msg, port, media)]
                    }
                    "INVITE" => {
                        invite = Some(msg.clone());
                        vec![reply(&msg, "180 Ringing", port)]
                    }
                    "CANCEL" => {
                        let mut v = vec![reply(&msg, "200 OK", port)];
                        if let Some(inv) = &invite {
                            v.push(reply(inv, "487 Request Terminated", port));
                        }
                        v
                    }
                    "OPTIONS" | "BYE" => vec![reply(&msg, "200 OK", port)],
                    _ => Vec::new(),
                };
                for a in answers {
                    let _ = sock.send_to(a.as_bytes(), from);
                }
            }
        });
        RawContact {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until it has received `what` (an event as recorded).
    fn wait_for(&self, what: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.seen().iter().any(|e| e == what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RawContact {
    fn drop(&mut self) {
        *self.stop.lock().expect("lock") = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 1001 calls 1002 with the 4 s stream; the scenario passes only if the call is answered.
fn call_1002(gw: &GatewayProcess) {
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "1002")).expect("run sipp");
    assert_passes(gw, &out, "1001 calls 1002 and is answered");
}

#[test]
fn a_device_with_two_contacts_rings_both_and_the_other_is_cancelled() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-fork", 300.0));
    let mut phone = live_phone(&mut gw);
    let second = RawContact::start(Behaviour::Rings);
    register_contact(&gw, "1002", second.port);
    call_1002(&gw);
    let out = phone.wait().expect("phone outcome");
    assert_passes(&gw, &out, "the live phone answered");
    let invite = format!("INVITE sip:1002@127.0.0.1:{}", second.port);
    assert!(
        second.wait_for(&invite, STATE_TIMEOUT),
        "the second contact was not rung: {:?}\n{}",
        second.seen(),
        gw.diag()
    );
    // It rang (180), the phone answered first: CANCEL, then the ACK of its 487.
    assert!(
        second.wait_for("CANCEL", STATE_TIMEOUT) && second.wait_for("ACK", STATE_TIMEOUT),
        "the ringing contact was not cancelled: {:?}\n{}",
        second.seen(),
        gw.diag()
    );
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
}

#[test]
fn a_dead_newer_contact_does_not_delay_the_live_phone() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-dead", 300.0));
    let mut phone = live_phone(&mut gw);
    // Registered after the live phone, so the most recent contact (the only one rung before
    // forking): it takes the INVITE and never answers.
    let dead = RawContact::start(Behaviour::Silent);
    register_contact(&gw, "1002", dead.port);
    let started = Instant::now();
    call_1002(&gw);
    let out = phone.wait().expect("phone outcome");
    assert_passes(&gw, &out, "the live phone answered");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    let invite = format!("INVITE sip:1002@127.0.0.1:{}", dead.port);
    assert!(
        dead.seen().contains(&invite),
        "both contacts ring: {:?}",
        dead.seen()
    );
    // The call (4 s of audio, 5.5 s pause) is not held up by the dead contact's Timer B.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "call took {took:?}");
}

#[test]
fn a_contact_that_failed_qualify_is_not_rung() {
    // Qualify every second; T1 100 ms: a silent contact fails its OPTIONS after 6.4 s.
    let mut gw = GatewayProcess::start(binary(), spec("gw-qual", 1.0));
    let phone = RawContact::start(Behaviour::Answers);
    register_contact(&gw, "1002", phone.port);
    gw.device("1002", "NOT_INUSE", STATE_TIMEOUT);
    let mark = gw.mark();
    let dead = RawContact::start(Behaviour::Silent);
    register_contact(&gw, "1002", dead.port);
    let contact = format!("sip:1002@127.0.0.1:{}", dead.port);
    let stderr = gw.dir().join("gateway.stderr");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("does not answer OPTIONS") && l.contains(&contact))
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "the silent contact never failed qualify\n{}",
            gw.diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The device stays reachable through its live phone.
    gw.drain();
    assert!(
        !gw.history[mark..]
            .iter()
            .any(|l| l.trim() == "DEVICE PJSIP/1002 UNAVAILABLE"),
        "one dead contact made the device unavailable\n{}",
        gw.diag()
    );
    call_1002(&gw);
    assert!(
        phone.seen().iter().any(|e| e.starts_with("INVITE"))
            && phone.wait_for("BYE", STATE_TIMEOUT),
        "the live phone took the call: {:?}",
        phone.seen()
    );
    let invite = format!("INVITE {contact}");
    assert!(
        !dead.seen().contains(&invite),
        "a contact that failed qualify was rung: {:?}",
        dead.seen()
    );
    assert!(
        dead.seen().iter().any(|e| e == "OPTIONS"),
        "it was qualified"
    );
}
