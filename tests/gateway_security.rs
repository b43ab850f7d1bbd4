//! End to end: the front door of the real `callfabric gateway` under attack (issue 12, part A).
//!
//! The attackers are sipvicious' `svcrack` (password guessing) and `svwar` (user
//! enumeration), and a scripted guesser on a raw UDP socket; the real phone is a digest client
//! on a raw socket bound to another loopback address (127.0.0.2). The security log lines are
//! read from the gateway's standard error and checked with `fail2ban-regex` against the shipped
//! filter (`examples/fail2ban`).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway::registrar::digest::{self, Algorithm};
use integration::gateway::{GatewayProcess, GatewaySpec};

/// Failures from one source that ban it in these tests.
const MAX_FAILURES: usize = 5;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_callfabric"))
}

/// A gateway with device 1000/secret (and `devices`), banning a source at its fifth failure,
/// and the status API on a free port.
fn gateway(name: &str, devices: &[&str]) -> GatewayProcess {
    gateway_with(name, devices, &["MD5"])
}

/// [`gateway`] offering `algorithms` (in order).
fn gateway_with(name: &str, devices: &[&str], algorithms: &[&str]) -> GatewayProcess {
    gateway_security(name, devices, algorithms, "")
}

/// [`gateway_with`] with `security` lines added to its `[security]` section.
fn gateway_security(
    name: &str,
    devices: &[&str],
    algorithms: &[&str],
    security: &str,
) -> GatewayProcess {
    let mut all = vec!["1000"];
    all.extend_from_slice(devices);
    let mut spec = GatewaySpec::new(name, &all);
    spec.digest_algorithms = algorithms.iter().map(|a| (*a).to_owned()).collect();
    // Sharded whatever the machine's core count: failures counted, challenges rate-limited
    // and bans applied for REGISTERs handled on the register shards (issue 16).
    spec.sip_shards = Some(4);
    spec.extra = format!(
        "\n[security]\nmax_failures_per_source = {MAX_FAILURES}\nmax_failures_per_user = 50\n\
         window_secs = 120\nban_secs = 120\n{security}\n[http]\nlisten = \"127.0.0.1:0\"\n"
    );
    GatewayProcess::start(&binary(), spec)
}

/// The gateway's standard error (its log).
fn log(gw: &GatewayProcess) -> String {
    std::fs::read_to_string(gw.dir().join("gateway.stderr")).unwrap_or_default()
}

/// The log lines containing `needle`.
fn log_lines(gw: &GatewayProcess, needle: &str) -> Vec<String> {
    log(gw)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Polls the log until `n` lines contain `needle` (the log is written asynchronously).
fn wait_log(gw: &GatewayProcess, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = log_lines(gw, needle);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A raw SIP user agent on a UDP socket bound to `ip`.
struct Ua {
    sock: UdpSocket,
    gw: SocketAddr,
    realm: String,
    n: u32,
}

/// What a 401/407 offered.
#[derive(Debug, Clone)]
struct Challenge {
    nonce: String,
    opaque: Option<String>,
    /// `(header name lower-case, algorithm)` of each challenge, in order.
    shape: Vec<(String, String)>,
}

impl Ua {
    fn new(ip: [u8; 4], gw: SocketAddr, realm: &str) -> Ua {
        let sock = UdpSocket::bind(SocketAddr::from((ip, 0))).expect("bind UA socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Ua {
            sock,
            gw,
            realm: realm.to_owned(),
            n: 0,
        }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    fn send(&self, msg: &[u8]) {
        self.sock.send_to(msg, self.gw).expect("send");
    }

    /// The next datagram within `wait`, as text.
    fn recv(&self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// The next response whose status line starts `SIP/2.0 <code>` and whose Call-ID is
    /// `call_id` (requests such as OPTIONS qualifies are skipped).
    fn response(&self, call_id: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.recv(left)?;
            if m.starts_with("SIP/2.0 ") && header(&m, "call-id").as_deref() == Some(call_id) {
                return Some(m);
            }
        }
        None
    }

    /// A request from user `from` (digest user `user`) with `auth` (header line or "").
    fn request(
        &mut self,
        method: &str,
        user: &str,
        from: &str,
        call_id: &str,
        auth: &str,
    ) -> String {
        self.n += 1;
        let local = self.local();
        let (ruri, to) = if method == "REGISTER" {
            (
                format!("sip:{}", self.realm),
                format!("sip:{user}@{}", self.realm),
            )
        } else {
            (
                format!("sip:3999@{}", self.realm),
                format!("sip:3999@{}", self.realm),
            )
        };
        let body = if method == "INVITE" {
            format!(
                "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                 m=audio {port} RTP/AVP 0\r\n",
                ip = local.ip(),
                port = local.port() + 2
            )
        } else {
            String::new()
        };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}x{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{from}@{realm}>;tag=t{n}\r\nTo: <{to}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {n} {method}\r\nContact: <sip:{user}@{local}>\r\n\
             {auth}{ctype}Expires: 300\r\nContent-Length: {len}\r\n\r\n{body}",
            n = self.n,
            realm = self.realm,
            len = body.len(),
        )
    }

    /// Sends `method` without credentials and returns its challenge (None: no answer).
    fn challenge(&mut self, method: &str, user: &str, call_id: &str) -> Option<Challenge> {
        let req = self.request(method, user, user, call_id, "");
        self.send(req.as_bytes());
        parse_challenge(&self.response(call_id, Duration::from_secs(3))?)
    }

    /// The credentials line answering `ch` for `user`/`password`.
    fn credentials(
        &self,
        method: &str,
        ch: &Challenge,
        user: &str,
        password: &str,
        nc: u32,
    ) -> String {
        let uri = if method == "REGISTER" {
            format!("sip:{}", self.realm)
        } else {
            format!("sip:3999@{}", self.realm)
        };
        let alg = Algorithm::Md5;
        let nc = format!("{nc:08x}");
        let ha1 = digest::ha1(alg, user, &self.realm, password);
        let ha2 = digest::ha2(alg, method, &uri);
        let resp = digest::response(alg, &ha1, &ch.nonce, &nc, "c0ffee", "auth", &ha2);
        let opaque = ch
            .opaque
            .as_ref()
            .map(|o| format!(", opaque=\"{o}\""))
            .unwrap_or_default();
        let name = if method == "REGISTER" {
            "Authorization"
        } else {
            "Proxy-Authorization"
        };
        format!(
            "{name}: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c0ffee\"{opaque}\r\n",
            realm = self.realm,
            nonce = ch.nonce,
        )
    }

    /// A whole authenticated request: challenge, then credentials; the final response.
    fn authenticated(
        &mut self,
        method: &str,
        user: &str,
        from: &str,
        password: &str,
    ) -> Option<String> {
        let call_id = format!("{method}-{user}-{}-{}", self.local().port(), self.n);
        let ch = self.challenge(method, user, &call_id)?;
        if method == "INVITE" {
            self.ack(&call_id);
        }
        let auth = self.credentials(method, &ch, user, password, 1);
        let req = self.request(method, user, from, &call_id, &auth);
        self.send(req.as_bytes());
        loop {
            let r = self.response(&call_id, Duration::from_secs(5))?;
            if !r.starts_with("SIP/2.0 1") {
                return Some(r);
            }
        }
    }

    /// An ACK for the last INVITE's non-2xx final response (same branch).
    fn ack(&mut self, call_id: &str) {
        let local = self.local();
        let ack = format!(
            "ACK sip:3999@{realm} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}x{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:x@{realm}>;tag=t{n}\r\nTo: <sip:3999@{realm}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {n} ACK\r\nContent-Length: 0\r\n\r\n",
            realm = self.realm,
            n = self.n
        );
        self.send(ack.as_bytes());
    }
}

/// The value of the first header `name` (lower-case) of a message.
fn header(msg: &str, name: &str) -> Option<String> {
    msg.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
    })
}

fn param(v: &str, name: &str) -> Option<String> {
    let at = v.find(&format!("{name}="))? + name.len() + 1;
    let rest = &v[at..];
    let value = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next()?,
        None => rest.split([',', ' ']).next()?,
    };
    Some(value.to_owned())
}

fn parse_challenge(resp: &str) -> Option<Challenge> {
    let mut shape = Vec::new();
    let mut first = None;
    for l in resp.split("\r\n").skip(1) {
        let Some((n, v)) = l.split_once(':') else {
            continue;
        };
        let n = n.trim().to_ascii_lowercase();
        if n == "www-authenticate" || n == "proxy-authenticate" {
            shape.push((n, param(v, "algorithm").unwrap_or_default()));
            first.get_or_insert_with(|| v.to_owned());
        }
    }
    let v = first?;
    Some(Challenge {
        nonce: param(&v, "nonce")?,
        opaque: param(&v, "opaque"),
        shape,
    })
}

fn status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `GET path` on the status API; the body.
fn http_get(gw: &mut GatewayProcess, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    gw.drain();
    let ready = match gw.history.iter().find(|l| l.starts_with("http ready ")) {
        Some(l) => l.clone(),
        None => gw.wait_for(Duration::from_secs(20), "the http ready line", |l| {
            l.starts_with("http ready ")
        }),
    };
    let addr = ready.trim_start_matches("http ready ").trim().to_owned();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to the status API");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}

/// `fail2ban-regex` of the gateway's log against the shipped filter: the number of lines it
/// matched for host `ip`.
fn fail2ban_hits(gw: &GatewayProcess, ip: &str) -> usize {
    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fail2ban/filter.d/callfabric.conf");
    let out = Command::new(
        integration::require_binary("fail2ban-regex")
            .expect("fail2ban-regex (scripts/install-peers.sh)"),
    )
    .arg("--print-all-matched")
    .arg(gw.dir().join("gateway.stderr"))
    .arg(&filter)
    .output()
    .expect("run fail2ban-regex");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fail2ban-regex: {text}");
    text.lines()
        .filter(|l| l.contains("SECURITY auth-failed") && l.contains(&format!("src={ip} ")))
        .count()
}

/// Checks what every attack test expects after the guessing from 127.0.0.1: at most
/// MAX_FAILURES failures logged before the ban, the ban logged and listed by the status API,
/// fail2ban's filter matching the lines, and the real phone registering from 127.0.0.2.
fn assert_banned_and_phone_registers(gw: &mut GatewayProcess, reason: &str) {
    let banned = wait_log(gw, "SECURITY banned src=127.0.0.1 ", 1);
    assert_eq!(banned.len(), 1, "one ban\n{}", gw.diag());
    let failed = log_lines(gw, "SECURITY auth-failed src=127.0.0.1 ");
    assert_eq!(
        failed.len(),
        MAX_FAILURES,
        "exactly {MAX_FAILURES} failures reach the gateway before the ban: {failed:#?}"
    );
    assert!(
        failed
            .iter()
            .all(|l| l.contains("user=1000 ") && l.contains(&format!("reason={reason}"))),
        "{failed:#?}"
    );
    assert_eq!(
        fail2ban_hits(gw, "127.0.0.1"),
        MAX_FAILURES,
        "fail2ban's filter"
    );
    let bans = http_get(gw, "/security/bans");
    assert!(bans.contains("\"source\":\"127.0.0.1\""), "{bans}");
    assert!(
        !log(gw).contains('\u{1b}'),
        "no ANSI escape codes in a log file"
    );

    // The real phone, from another address, registers at once.
    let mut phone = Ua::new([127, 0, 0, 2], gw.udp, &gw.spec.realm);
    let r = phone
        .authenticated("REGISTER", "1000", "1000", "secret")
        .expect("the phone gets an answer");
    assert_eq!(status(&r), 200, "{r}\n{}", gw.diag());
}

/// A scripted guesser: wrong passwords for 1000 from 127.0.0.1 as fast as answers come. The
/// gateway answers exactly MAX_FAILURES guesses, then nothing (banned), logs each failure and
/// the ban; the phone still registers from 127.0.0.2.
#[test]
fn scripted_guesser_is_banned_and_the_phone_registers_from_another_address() {
    let mut gw = gateway("sec-guess", &[]);
    let mut att = Ua::new([127, 0, 0, 1], gw.udp, &gw.spec.realm);
    let call_id = "guess-1";
    let mut ch = att
        .challenge("REGISTER", "1000", call_id)
        .expect("first challenge");
    let mut answered = 0;
    let mut unanswered = 0;
    for guess in 0..40 {
        let auth = att.credentials("REGISTER", &ch, "1000", &format!("guess{guess}"), 1);
        let req = att.request("REGISTER", "1000", "1000", call_id, &auth);
        att.send(req.as_bytes());
        match att.response(call_id, Duration::from_millis(700)) {
            Some(r) => {
                assert_eq!(status(&r), 401, "{r}");
                answered += 1;
                ch = parse_challenge(&r).expect("a fresh challenge");
            }
            None => {
                unanswered += 1;
                if unanswered == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(
        answered,
        MAX_FAILURES,
        "answers before the ban\n{}",
        gw.diag()
    );
    assert_eq!(unanswered, 3);
    assert_banned_and_phone_registers(&mut gw, "wrong-password");
    // Still banned: even the right password from 127.0.0.1 is not answered.
    assert!(att.challenge("REGISTER", "1000", "guess-2").is_none());
}

/// sipvicious' svcrack with a dictionary whose last word is the password: it never finds it
/// (banned at the fifth failure), and the phone still registers from 127.0.0.2.
#[test]
fn svcrack_is_banned_before_it_finds_the_password() {
    let mut gw = gateway("sec-svcrack", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let dict = dir.path().join("words.txt");
    let mut words: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
    words.push("secret".into());
    std::fs::write(&dict, words.join("\n") + "\n").expect("dictionary");
    let svcrack = integration::require_binary("svcrack").expect("svcrack (apt sipvicious)");
    let out = Command::new(svcrack)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .args(["-u", "1000", "-d"])
        .arg(&dict)
        .args(["-b", "127.0.0.1", "--maximumtime", "5"])
        .arg(format!("udp://{}", gw.udp))
        .output()
        .expect("run svcrack");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("svcrack: {text}");
    assert!(
        !text.contains("secret"),
        "svcrack found the password: {text}\n{}",
        gw.diag()
    );
    assert_banned_and_phone_registers(&mut gw, "wrong-password");
}

/// sipvicious' svwar over a range holding two real users finds none: every user name draws
/// the same challenge (SHA-256, MD5), including one whose device has its own digest list
/// (MD5 only: it used to be challenged with MD5 alone, issue 12 §3).
#[test]
fn svwar_finds_no_user_and_challenges_do_not_tell_users_apart() {
    // No challenge rate limit here: the rounds below draw hundreds of challenges a second.
    let gw = gateway_security(
        "sec-svwar",
        &["1005"],
        &["SHA-256", "MD5"],
        "challenges_per_sec = 0\n",
    );
    // 1005 challenges as MD5 only: it must not show in its challenge.
    let out = Command::new(binary())
        .args(["devices", "add", "--config"])
        .arg(&gw.config)
        .args(["--user", "1005", "--password-stdin", "--digest", "MD5"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().expect("stdin").write_all(b"secret\n")?;
            c.wait_with_output()
        })
        .expect("devices add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = Instant::now();
    let mut ua = Ua::new([127, 0, 0, 3], gw.udp, &gw.spec.realm);
    // Rounds until five device-table reloads (db_reload_secs = 0.2) have passed since 1005
    // was saved, so its digest list is surely loaded for the last rounds.
    let mut round = 0;
    while round < 2 || saved.elapsed() < Duration::from_secs(1) {
        round += 1;
        for method in ["REGISTER", "INVITE"] {
            let shapes: Vec<_> = ["1000", "1005", "9999", "nobody"]
                .iter()
                .map(|u| {
                    let call_id = format!("enum-{method}-{u}-{round}");
                    ua.challenge(method, u, &call_id)
                        .unwrap_or_else(|| panic!("{method} {u}: no challenge"))
                        .shape
                })
                .collect();
            assert!(
                shapes.windows(2).all(|w| w[0] == w[1]),
                "{method}: challenges differ by user: {shapes:?}"
            );
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let svwar = integration::require_binary("svwar").expect("svwar (apt sipvicious)");
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        let out = Command::new(&svwar)
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .args([
                "-e",
                "995-1010",
                "-m",
                method,
                "-b",
                "127.0.0.4",
                "--force",
                "--maximumtime",
                "5",
            ])
            .arg(format!("udp://{}", gw.udp))
            .output()
            .expect("run svwar");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("svwar -m {method}: {text}");
        for user in ["1000", "1005"] {
            assert!(
                !text.lines().any(|l| l.contains(&format!("| {user} "))
                    || l.split_whitespace().next() == Some(user)),
                "svwar -m {method} found {user}: {text}"
            );
        }
    }
}

/// A phone authenticated as 2002 presenting 1000 in From gets 403 and a security log line;
/// presenting itself it passes the check (404: 3999 is nobody).
#[test]
fn spoofed_from_gets_403() {
    let gw = gateway("sec-spoof", &["2002"]);
    let mut phone = Ua::new([127, 0, 0, 5], gw.udp, &gw.spec.realm);
    let r = phone
        .authenticated("INVITE", "2002", "1000", "secret")
        .expect("an answer");
    assert_eq!(status(&r), 403, "{r}\n{}", gw.diag());
    let lines = wait_log(&gw, "reason=identity-mismatch", 1);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("src=127.0.0.5 ") && l.contains("user=2002 ")),
        "{lines:#?}"
    );
    let r = phone
        .authenticated("INVITE", "2002", "2002", "secret")
        .expect("an answer");
    assert_eq!(status(&r), 404, "{r}\n{}", gw.diag());
    // The refused call's CDR: the device it authenticated as and the identity it presented.
    let url = format!("sqlite://{}", gw.dir().join("sec-spoof.db").display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = rt.block_on(async {
            let store = gateway::devices::DeviceStore::open(&url)
                .await
                .expect("open db");
            store.cdrs().await.expect("cdrs")
        });
        if let Some(r) = rows.into_iter().find(|r| r.reason == "404") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no CDR for the 404\n{}",
            gw.diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row.src_device.as_deref(), Some("PJSIP/2002"), "{row:?}");
    assert_eq!(row.presented, "2002", "{row:?}");
}

/// One unauthenticated INVITE, never ACKed, draws exactly one 407 over 64·T1 (T1 = 100 ms):
/// the challenge is sent statelessly and never retransmitted.
#[test]
fn one_unauthenticated_invite_draws_exactly_one_407() {
    let gw = gateway("sec-407", &[]);
    let mut ua = Ua::new([127, 0, 0, 6], gw.udp, &gw.spec.realm);
    let req = ua.request("INVITE", "1000", "1000", "once-407", "");
    ua.send(req.as_bytes());
    let t1 = Duration::from_millis(100);
    let end = Instant::now() + t1 * 64 + t1 * 4;
    let mut got = Vec::new();
    while Instant::now() < end {
        if let Some(m) = ua.recv(Duration::from_millis(200)) {
            got.push(m);
        }
    }
    let challenges = got.iter().filter(|m| m.starts_with("SIP/2.0 407")).count();
    assert_eq!(challenges, 1, "{got:#?}");
}

/// The device database is created readable by its owner only.
#[test]
fn device_database_is_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let gw = gateway("sec-db", &[]);
    let db = gw.dir().join("sec-db.db");
    let mode = std::fs::metadata(&db)
        .expect("db file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", db.display());
    for ext in ["db-wal", "db-shm", "db-journal"] {
        if let Ok(m) = std::fs::metadata(gw.dir().join(format!("sec-db.{ext}"))) {
            assert_eq!(m.permissions().mode() & 0o077, 0, "{ext}");
        }
    }
}

/// A request with a header line that is not UTF-8 (PROTOS c07-like) gets 400.
#[test]
fn non_utf8_request_gets_400() {
    let gw = gateway("sec-utf8", &[]);
    let ua = Ua::new([127, 0, 0, 7], gw.udp, &gw.spec.realm);
    let local = ua.local();
    let mut msg = format!(
        "OPTIONS sip:{realm} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKutf8;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@{realm}>;tag=1\r\nTo: <sip:{realm}>\r\n\
         Call-ID: utf8-1\r\nCSeq: 1 OPTIONS\r\n",
        realm = gw.spec.realm
    )
    .into_bytes();
    msg.extend_from_slice(b"Subject: \xc0\xafPROTOS\xff\r\nContent-Length: 0\r\n\r\n");
    ua.send(&msg);
    let r = ua
        .response("utf8-1", Duration::from_secs(5))
        .expect("an answer");
    assert_eq!(status(&r), 400, "{r}");
}

/// Passwords and user names are validated by `callfabric devices add`.
#[test]
fn devices_add_refuses_an_empty_password_and_a_user_name_with_a_space() {
    let gw = gateway("sec-cli", &[]);
    for (user, password) in [("2000", ""), ("20 00", "secret")] {
        let out = Command::new(binary())
            .args(["devices", "add", "--config"])
            .arg(&gw.config)
            .args(["--user", user, "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(format!("{password}\n").as_bytes())?;
                c.wait_with_output()
            })
            .expect("devices add");
        assert!(!out.status.success(), "{user:?}/{password:?} accepted");
    }
}

/// `--log-format json`: one JSON object per line, no ANSI codes; a device database readable
/// by others is reported.
#[test]
fn json_logs_and_a_readable_database_reported() {
    use std::os::unix::fs::PermissionsExt as _;
    let gw = gateway("sec-json", &[]);
    let db = gw.dir().join("sec-json.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(binary())
        .args(["--log-format", "json", "devices", "list", "--config"])
        .arg(&gw.config)
        .output()
        .expect("devices list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("readable by others"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(!err.contains('\u{1b}'), "ANSI codes: {err}");
}

/// Challenges are rate-limited per source: 40 unauthenticated REGISTERs sent at once from one
/// source draw the burst (5) and what the rate (5/s) refills meanwhile, not 40; another source
/// is answered at once.
#[test]
fn challenges_are_rate_limited_per_source() {
    let gw = gateway_security(
        "sec-rate",
        &[],
        &["MD5"],
        "challenges_per_sec = 5\nchallenge_burst = 5\n",
    );
    let mut flood = Ua::new([127, 0, 0, 8], gw.udp, &gw.spec.realm);
    let t0 = Instant::now();
    for i in 0..40 {
        let req = flood.request("REGISTER", "1000", "1000", &format!("rate-{i}"), "");
        flood.send(req.as_bytes());
    }
    let mut answers = 0;
    while flood.recv(Duration::from_millis(500)).is_some() {
        answers += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let most = 5 + (5.0 * secs).ceil() as usize;
    assert!(
        (5..=most).contains(&answers),
        "{answers} challenges in {secs:.2} s (burst 5, 5/s: at most {most})\n{}",
        gw.diag()
    );
    let mut other = Ua::new([127, 0, 0, 9], gw.udp, &gw.spec.realm);
    assert!(other.challenge("REGISTER", "1000", "rate-other").is_some());
    let bans = {
        let mut gw = gw;
        http_get(&mut gw, "/security/bans")
    };
    assert!(bans.contains("\"challenges_dropped\":"), "{bans}");
    let dropped: u64 = bans
        .split("\"challenges_dropped\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .expect("challenges_dropped");
    assert_eq!(dropped as usize, 40 - answers, "{bans}");
}
