//! The XMPP server harness against the real servers: start, readiness probe, SASL PLAIN,
//! STARTTLS verification, component port, stop / start_again / kill with persistent data.
//!
//! Needs Prosody and ejabberd (`scripts/install-peers.sh`). The two tests run in parallel,
//! which also checks that instances don't share ports or state.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::raw_xmpp::{sasl_plain_login, stream_features, RawXmpp};
use integration::{wait_until, ServerKind, XmppServer};

const USERS: &[&str] = &["gw-a", "gw-b", "acd-1", "watcher", "admin"];
const PASSWORD: &str = "s3cret-pw";
const T: Duration = Duration::from_secs(10);

fn login(server: &XmppServer, user: &str, password: &str) -> bool {
    sasl_plain_login(server.c2s_addr(), server.domain(), user, password, T).unwrap_or_else(|e| {
        panic!(
            "{} login exchange for {user} failed: {e:#}\n{}",
            server.kind(),
            server.log_tail()
        )
    })
}

fn assert_ready(server: &XmppServer) {
    let features = stream_features(server.c2s_addr(), server.domain(), T)
        .unwrap_or_else(|e| panic!("probe {}: {e:#}\n{}", server.kind(), server.log_tail()));
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-tls"),
        "{}: STARTTLS not offered: {features}",
        server.kind()
    );
    assert!(
        !features.contains("<required"),
        "{}: STARTTLS must stay optional: {features}",
        server.kind()
    );
    assert!(
        features.contains(">PLAIN<"),
        "{}: SASL PLAIN not offered in the clear: {features}",
        server.kind()
    );
}

/// STARTTLS with the harness CA as the only trust anchor, hostname fabric.test checked.
fn assert_starttls_verifies(server: &XmppServer) {
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(server.c2s_addr().to_string())
        .args(["-starttls", "xmpp", "-xmpphost", server.domain(), "-CAfile"])
        .arg(server.ca_cert())
        .args(["-verify_return_error", "-verify_hostname", server.domain()])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("Verification: OK"),
        "{}: STARTTLS verification failed: {text}",
        server.kind()
    );
}

/// The component port answers a XEP-0114 stream header with a stream id.
fn assert_component_port(server: &XmppServer) {
    use std::io::{Read as _, Write as _};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.component_port()));
    let mut s = TcpStream::connect_timeout(&addr, T).expect("connect component port");
    s.set_read_timeout(Some(T)).expect("timeout");
    write!(
        s,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='presence.fabric.test'>"
    )
    .expect("send");
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + T;
    while !(got.contains("<stream:stream") && got.contains(" id=")) && Instant::now() < deadline {
        let n = s.read(&mut buf).expect("read component stream header");
        assert!(n > 0, "{}: component port closed: {got}", server.kind());
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        got.contains("jabber:component:accept"),
        "{}: {got}",
        server.kind()
    );
    assert!(!server.component_secret().is_empty());
}

const ITEMS: &str = "<pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                     <items node='device_state'/></pubsub>";

/// Logged in and bound.
fn session(server: &XmppServer, user: &str) -> RawXmpp {
    let mut conn = RawXmpp::connect(server.c2s_addr(), server.domain(), T).expect("connect");
    assert!(conn
        .sasl_plain(server.domain(), user, PASSWORD)
        .expect("sasl"));
    assert!(
        conn.features().contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{}",
        conn.features()
    );
    conn.iq(
        "set",
        None,
        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>harness</resource></bind>",
    )
    .unwrap_or_else(|e| panic!("{}: bind: {e:#}", server.kind()));
    conn
}

fn pubsub_create_and_publish(server: &XmppServer) {
    let kind = server.kind();
    let pubsub = server.pubsub_service();
    let mut conn = session(server, "gw-a");
    conn.iq(
        "set",
        Some(pubsub),
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='device_state'/>\
         <configure><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#persist_items'><value>1</value></field>\
         <field var='pubsub#deliver_payloads'><value>1</value></field>\
         <field var='pubsub#max_items'><value>10000</value></field>\
         </x></configure></pubsub>",
    )
    .unwrap_or_else(|e| panic!("{kind}: create device_state: {e:#}\n{}", server.log_tail()));
    conn.iq(
        "set",
        Some(pubsub),
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='device_state'>\
         <item id='SIP/100'><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' \
         cachable='1'>INUSE</state></item></publish></pubsub>",
    )
    .unwrap_or_else(|e| panic!("{kind}: publish: {e:#}\n{}", server.log_tail()));
    let items = conn
        .iq("get", Some(pubsub), ITEMS)
        .unwrap_or_else(|e| panic!("{kind}: items: {e:#}"));
    assert!(
        items.contains("id='SIP/100'") || items.contains("id=\"SIP/100\""),
        "{items}"
    );
    assert!(items.contains("INUSE"), "{kind}: {items}");
    conn.close();
}

fn assert_down(server: &mut XmppServer) {
    assert!(!server.is_running(), "{} still running", server.kind());
    assert!(server.pid().is_none());
    // nothing listens on the c2s port any more
    wait_until(Duration::from_secs(5), "c2s port to close", || {
        TcpStream::connect_timeout(&server.c2s_addr(), Duration::from_millis(200)).is_err()
    })
    .unwrap_or_else(|e| panic!("{}: {e:#}", server.kind()));
}

fn exercise(kind: ServerKind) {
    let t0 = Instant::now();
    let mut server =
        XmppServer::start(kind, USERS, PASSWORD).unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    eprintln!(
        "{kind}: started with {} users in {:?} ({server:?})",
        USERS.len(),
        t0.elapsed()
    );

    assert_eq!(server.kind(), kind);
    assert_eq!(server.domain(), "fabric.test");
    assert_eq!(server.pubsub_service(), "pubsub.fabric.test");
    assert!(server.c2s_addr().ip().is_loopback());
    assert!(server.dir().is_dir());
    assert!(server.ca_cert().is_file());
    assert!(server.is_running());

    assert_ready(&server);
    for user in USERS {
        assert!(
            login(&server, user, PASSWORD),
            "{kind}: {user} cannot log in"
        );
    }
    assert!(
        !login(&server, "gw-a", "wrong-password"),
        "{kind}: wrong password accepted"
    );
    assert!(
        !login(&server, "nobody", PASSWORD),
        "{kind}: unknown user accepted"
    );
    assert_starttls_verifies(&server);
    assert_component_port(&server);

    if kind == ServerKind::Ejabberd {
        let registered = server
            .ejabberdctl(&["registered_users", "fabric.test"])
            .unwrap_or_else(|e| panic!("ejabberdctl: {e:#}"));
        let mut listed: Vec<&str> = registered.split_whitespace().collect();
        listed.sort_unstable();
        let mut expected = USERS.to_vec();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    } else {
        assert!(server.ejabberdctl(&["status"]).is_err());
    }

    // an ordinary account creates a flat node with a large max_items and publishes to it
    pubsub_create_and_publish(&server);

    // graceful stop, then the same instance again: same port, same accounts
    let dir = server.dir().to_path_buf();
    let c2s = server.c2s_addr();
    let t1 = Instant::now();
    server.stop().expect("stop");
    eprintln!("{kind}: stopped in {:?}", t1.elapsed());
    assert_down(&mut server);
    server.stop().expect("stop is idempotent");

    let t2 = Instant::now();
    server
        .start_again()
        .unwrap_or_else(|e| panic!("start_again {kind}: {e:#}"));
    eprintln!("{kind}: started again in {:?}", t2.elapsed());
    assert_eq!(server.dir(), dir);
    assert_eq!(server.c2s_addr(), c2s);
    assert_ready(&server);
    assert!(
        login(&server, "gw-a", PASSWORD),
        "{kind}: account lost across restart"
    );
    let items = session(&server, "gw-b")
        .iq("get", Some(server.pubsub_service()), ITEMS)
        .unwrap_or_else(|e| panic!("{kind}: items after restart: {e:#}"));
    assert!(
        items.contains("INUSE"),
        "{kind}: pubsub item lost across restart: {items}"
    );
    assert!(!login(&server, "gw-a", "wrong-password"));

    // crash, then recover from the same data
    server.kill().expect("kill");
    assert_down(&mut server);
    server.kill().expect("kill is idempotent");
    server
        .start_again()
        .unwrap_or_else(|e| panic!("start_again after kill {kind}: {e:#}"));
    assert!(
        login(&server, "watcher", PASSWORD),
        "{kind}: account lost across a crash"
    );

    let tail = server.log_tail();
    assert!(!tail.is_empty());

    server.stop().expect("final stop");
    drop(server);
    assert!(!dir.exists(), "{kind}: instance dir not removed on drop");
}

#[test]
fn prosody_harness() {
    exercise(ServerKind::Prosody);
}

#[test]
fn ejabberd_harness() {
    exercise(ServerKind::Ejabberd);
}

#[test]
fn drop_stops_the_server() {
    let server = XmppServer::start(ServerKind::Prosody, &[], "x").expect("start");
    let addr = server.c2s_addr();
    let pid = server.pid().expect("pid");
    drop(server);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still there"
    );
}

#[test]
fn free_ports_are_distinct() {
    let tcp: std::collections::HashSet<u16> =
        (0..50).map(|_| integration::free_tcp_port()).collect();
    assert_eq!(tcp.len(), 50);
    let udp: std::collections::HashSet<u16> =
        (0..50).map(|_| integration::free_udp_port()).collect();
    assert_eq!(udp.len(), 50);
    for port in udp {
        std::net::UdpSocket::bind(("127.0.0.1", port)).expect("udp port free");
    }
}

#[test]
fn wait_until_reports_what_timed_out() {
    let err = wait_until(Duration::from_millis(30), "the moon", || false).expect_err("timeout");
    assert!(err.to_string().contains("the moon"), "{err}");
    let mut n = 0;
    wait_until(Duration::from_secs(1), "three polls", || {
        n += 1;
        n == 3
    })
    .expect("ok");
    assert_eq!(n, 3);
}

#[test]
fn python_venv_has_slixmpp() {
    let python = integration::python().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(&python)
        .args(["-c", "import slixmpp; print(slixmpp.__version__)"])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
}
