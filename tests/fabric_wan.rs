//! The state fabric across a WAN: two sites (network namespaces made by the WAN lab,
//! `integration::wanlab`) joined by a delayed, lossy link that the test can cut. The XMPP server
//! (Prosody or ejabberd) runs in site A; one fabric member runs in each site: the real
//! `callfabric statebus watch --stdin` binary, which prints every aggregate change and
//! publishes what the test writes to its stdin.
//!
//! Knobs (environment): `CALLFABRIC_WAN_PARTITION_SECS` (default 30, as issue 9 asks) and
//! `CALLFABRIC_WAN_TTL_SECS` (members' liveness TTL, default 10; must be shorter than the
//! partition). Needs root: elsewhere each test prints why it is skipped.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::wanlab::{unavailable, Site, SiteProcess, WanLab, WanSpec};
use integration::{ServerKind, XmppServer};

const PASSWORD: &str = "secret";
const USERS: &[&str] = &["gw-a", "gw-b"];
/// Generous: a loaded 2-core machine, ejabberd's start, TLS over a 40 ms link.
const T: Duration = Duration::from_secs(60);
/// Issue 9: members converge within 5 s of the heal.
const CONVERGE: Duration = Duration::from_secs(5);
const HEARTBEAT_SECS: f64 = 1.0;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

struct Fabric {
    // Members first: dropped before the server and the lab.
    a: SiteProcess,
    b: SiteProcess,
    _server: XmppServer,
    _dir: tempfile::TempDir,
    lab: WanLab,
}

/// The lab, the server in site A, and members gw-a (site A) and gw-b (site B), both online.
fn fabric(kind: ServerKind, spec: WanSpec, ttl_secs: u64) -> Option<Fabric> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED (WAN lab unavailable): {why}");
        return None;
    }
    let lab = WanLab::start(spec).expect("start the WAN lab");
    let server = lab
        .xmpp_server(Site::A, kind, USERS, PASSWORD)
        .unwrap_or_else(|e| panic!("{kind} in site A: {e:#}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let server_addr = lab.socket_addr(Site::A, server.c2s_addr().port());
    let member = |site: Site, user: &str| {
        let config = dir.path().join(format!("{user}.toml"));
        let text = format!(
            "[node]\nname = \"{user}\"\nsite = \"{site:?}\"\nrole = \"gateway\"\n\n\
             [statebus]\nbackend = \"xmpp\"\njid = \"{user}@{domain}\"\npassword = \"{PASSWORD}\"\n\
             server = \"{server_addr}\"\npubsub_service = \"{pubsub}\"\ntls = \"starttls\"\n\
             ca_file = {ca:?}\nheartbeat_interval_secs = {HEARTBEAT_SECS}\n\
             liveness_ttl_secs = {ttl_secs}\niq_timeout_secs = 5\nkeepalive_secs = 5\n\
             reconnect_initial_secs = 0.25\nreconnect_max_secs = 1\n\
             fabric_jids = [\"gw-a@{domain}\", \"gw-b@{domain}\"]\n",
            domain = server.domain(),
            pubsub = server.pubsub_service(),
            ca = server.ca_cert().display().to_string(),
        );
        std::fs::write(&config, text).expect("write member config");
        let config = config.display().to_string();
        let mut p = lab
            .spawn(
                site,
                user,
                binary(),
                &["statebus", "watch", "--config", &config, "--stdin"],
                &[("CALLFABRIC_LOG", "info")],
            )
            .expect("spawn member");
        p.wait_since(0, T, "STATUS online", |l| l == "STATUS online")
            .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log_tail()));
        p
    };
    let a = member(Site::A, "gw-a");
    let b = member(Site::B, "gw-b");
    Some(Fabric {
        a,
        b,
        _server: server,
        _dir: dir,
        lab,
    })
}

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn prosody() {
                super::$name(integration::ServerKind::Prosody)
            }
            #[test]
            fn ejabberd() {
                super::$name(integration::ServerKind::Ejabberd)
            }
        }
    )*};
}

on_both_servers!(state_and_mwi_cross_a_lossy_link);

// Needs three statebus behaviours: each TCP connect attempt bounded (an unbounded one waited
// through the kernel's SYN back-off and converged 10-18 s after the heal); the first heartbeat
// after a reconnect sent only after the republished state; an expired member revived only by a
// fresh heartbeat, not by live items XEP-0198 resends from while it was cut off (ejabberd
// showed the pre-partition INUSE again).
mod partition_expires_then_heal_converges {
    #[test]
    fn prosody() {
        super::partition_expires_then_heal_converges(integration::ServerKind::Prosody)
    }
    #[test]
    fn ejabberd() {
        super::partition_expires_then_heal_converges(integration::ServerKind::Ejabberd)
    }
}

/// 40 ms one way with 1 % loss: device state and MWI published at either site are seen at the
/// other, including the last of a burst of changes.
fn state_and_mwi_cross_a_lossy_link(kind: ServerKind) {
    let Some(mut f) = fabric(kind, WanSpec::new(40, 0.01), 10) else {
        return;
    };
    let mark = f.a.mark();
    let t0 = Instant::now();
    ok(f.b.send("device PJSIP/2001=INUSE"));
    let (at, _) = ok(f.a.wait_since(mark, T, "B's INUSE at A", |l| {
        l == "DEVICE PJSIP/2001 INUSE"
    }));
    eprintln!("{kind}: B → A device state in {:?}", at - t0);

    let mark = f.b.mark();
    ok(f.a.send("device PJSIP/1001=RINGING"));
    ok(f.b.wait_since(mark, T, "A's RINGING at B", |l| {
        l == "DEVICE PJSIP/1001 RINGING"
    }));

    let (ma, mb) = (f.a.mark(), f.b.mark());
    ok(f.b.send("mwi 2001@default=2/5"));
    ok(f.a.send("mwi 1001@default=1/0"));
    ok(f.a.wait_since(ma, T, "B's MWI at A", |l| {
        l == "MWI 2001@default new=2 old=5"
    }));
    ok(f.b.wait_since(mb, T, "A's MWI at B", |l| {
        l == "MWI 1001@default new=1 old=0"
    }));

    // A burst: whatever is lost and retransmitted, the last state wins at the other site.
    let mark = f.a.mark();
    for i in 0..30 {
        let st = ["NOT_INUSE", "INUSE", "RINGING"][i % 3];
        ok(f.b.send(&format!("device PJSIP/2002={st}")));
    }
    ok(f.b.send("device PJSIP/2002=BUSY"));
    ok(f.a.wait_since(mark, T, "the burst's last state at A", |l| {
        l == "DEVICE PJSIP/2002 BUSY"
    }));
    let after = f.a.mark();
    // Nothing older arrives after the newest.
    let stale =
        f.a.wait_since(after, Duration::from_secs(2), "a stale PJSIP/2002", |l| {
            l.starts_with("DEVICE PJSIP/2002 ")
        });
    assert!(stale.is_err(), "an older state followed BUSY: {stale:?}");
    eprintln!("{kind}: wire {:?}", f.lab.stats());
    assert!(f.a.is_running() && f.b.is_running(), "a member exited");
}

/// A partition longer than the TTL: B's INUSE device reads UNAVAILABLE at A after the TTL (and
/// not before), nothing stale comes back, and within 5 s of the heal each site sees the other's
/// *current* state, changed during the partition.
fn partition_expires_then_heal_converges(kind: ServerKind) {
    let partition = Duration::from_secs(env_secs("CALLFABRIC_WAN_PARTITION_SECS", 30));
    let ttl_secs = env_secs("CALLFABRIC_WAN_TTL_SECS", 10);
    let ttl = Duration::from_secs(ttl_secs);
    assert!(
        ttl < partition,
        "CALLFABRIC_WAN_TTL_SECS must be shorter than the partition"
    );
    let Some(mut f) = fabric(kind, WanSpec::new(40, 0.0), ttl_secs) else {
        return;
    };
    let (ma, mb) = (f.a.mark(), f.b.mark());
    ok(f.b.send("device PJSIP/2001=INUSE"));
    ok(f.a.send("mwi 1001@default=1/0"));
    ok(f.a.wait_since(ma, T, "B's INUSE at A", |l| l == "DEVICE PJSIP/2001 INUSE"));
    ok(f.b.wait_since(mb, T, "A's MWI at B", |l| {
        l == "MWI 1001@default new=1 old=0"
    }));

    let before_cut = f.a.mark();
    f.lab.partition();
    let cut = Instant::now();
    let (gone, _) = ok(f.a.wait_since(
        before_cut,
        ttl + Duration::from_secs(15),
        "B's device UNAVAILABLE at A after the TTL",
        |l| l == "DEVICE PJSIP/2001 UNAVAILABLE",
    ));
    let expired_after = gone - cut;
    eprintln!("{kind}: B's device UNAVAILABLE at A {expired_after:?} after the cut (TTL {ttl:?})");
    // Expiry is the TTL's doing: B's last heartbeat is at most one interval older than the cut.
    assert!(
        expired_after + Duration::from_secs_f64(HEARTBEAT_SECS + 1.0) >= ttl,
        "UNAVAILABLE after {expired_after:?}, before the TTL {ttl:?}"
    );

    // Both sites change state while cut off from each other.
    ok(f.b.send("device PJSIP/2001=NOT_INUSE"));
    ok(f.a.send("mwi 1001@default=4/2"));
    let heal_at = cut + partition;
    while Instant::now() < heal_at {
        // the partition's length is the scenario, not a wait for a condition
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = f.a.lines_since(before_cut);
    let stale = |lines: &[String]| {
        lines
            .iter()
            .position(|l| l == "DEVICE PJSIP/2001 UNAVAILABLE")
            .map(|i| lines[i..].contains(&"DEVICE PJSIP/2001 INUSE".to_string()))
            .unwrap_or(false)
    };
    assert!(
        !stale(&during),
        "a stale INUSE came back during the partition:\n{}",
        during.join("\n")
    );

    let (ma, mb) = (f.a.mark(), f.b.mark());
    f.lab.heal();
    let healed = Instant::now();
    let (at_a, _) = ok(f
        .a
        .wait_since(ma, T, "B's current state at A after the heal", |l| {
            l == "DEVICE PJSIP/2001 NOT_INUSE"
        }));
    let (at_b, _) = ok(f
        .b
        .wait_since(mb, T, "A's current MWI at B after the heal", |l| {
            l == "MWI 1001@default new=4 old=2"
        }));
    let (to_a, to_b) = (at_a - healed, at_b - healed);
    eprintln!("{kind}: after the heal: B's state at A in {to_a:?}, A's MWI at B in {to_b:?}");
    let after = f.a.lines_since(ma);
    assert!(
        !after.iter().any(|l| l == "DEVICE PJSIP/2001 INUSE"),
        "the stale INUSE came back after the heal:\n{}",
        after.join("\n")
    );
    assert!(
        to_a <= CONVERGE && to_b <= CONVERGE,
        "{kind}: converged {to_a:?} (at A) / {to_b:?} (at B) after the heal, over {CONVERGE:?}\n{}\n{}",
        f.a.diag(),
        f.b.diag()
    );
}

on_both_servers!(a_publish_costs_one_segment_on_the_link);

/// What a member puts on the link per publish: one data segment (the publish IQ), plus its
/// heartbeats. XEP-0198 stream management, which ejabberd offers, would add an ack request and
/// an answer per stanza each way: segments whose loss holds back the publishes behind them on
/// a lossy link (p99 publish→notify 1.7-2.2x the raw floor at 1 % loss, `fabric_wan_bench`).
/// Counted on the wire (`WanLab::tcp_flows`), lossless, one change at a time.
fn a_publish_costs_one_segment_on_the_link(kind: ServerKind) {
    let Some(mut f) = fabric(kind, WanSpec::new(5, 0.0), 10) else {
        return;
    };
    // Only gw-b connects from site B.
    let b_flow = |lab: &WanLab| {
        let flows: Vec<_> = lab
            .tcp_flows()
            .into_iter()
            .filter(|fl| fl.data[1] > 0)
            .collect();
        assert_eq!(flows.len(), 1, "one connection from B expected: {flows:?}");
        flows[0]
    };
    let before = b_flow(&f.lab);
    let t0 = Instant::now();
    const N: u64 = 40;
    for i in 0..N {
        let st = ["INUSE", "NOT_INUSE"][i as usize % 2];
        let mark = f.a.mark();
        ok(f.b.send(&format!("device PJSIP/3001={st}")));
        let want = format!("DEVICE PJSIP/3001 {st}");
        ok(f.a.wait_since(mark, T, &want, |l| l == want));
    }
    let after = b_flow(&f.lab);
    assert_eq!(
        (after.port_a, after.port_b),
        (before.port_a, before.port_b),
        "B reconnected during the test"
    );
    let w = after.since(&before);
    // One heartbeat per HEARTBEAT_SECS, one more for a partial interval, a little slack.
    let beats = (t0.elapsed().as_secs_f64() / HEARTBEAT_SECS).ceil() as u64 + 1;
    let allowed = N + beats + 3;
    eprintln!(
        "{kind}: {N} publishes in {:?}: B->A {} data segments (allowed {allowed}), {} pure ACKs; \
         A->B {} data, {} pure",
        t0.elapsed(),
        w.data[1],
        w.pure[1],
        w.data[0],
        w.pure[0]
    );
    assert!(
        w.data[1] <= allowed,
        "{kind}: B sent {} data segments for {N} publishes and about {beats} heartbeats \
         (allowed {allowed}): per-stanza stream-management acks?",
        w.data[1]
    );
}
