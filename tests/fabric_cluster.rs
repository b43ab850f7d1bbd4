//! The fabric on a clustered XMPP service (issue 17): a two-node ejabberd cluster started by the
//! test (`integration::ejabberd_cluster`, its own epmd on loopback). Members connected to
//! different nodes share state and MWI; a member that knows several nodes (a `servers` list, or
//! DNS SRV `_xmpp-client._tcp` from a private dnsmasq) moves to the surviving node when its node
//! is killed with SIGKILL, and the fabric reconverges; the killed node comes back and rejoins.
//! Every wait polls a condition with a timeout.

mod fabric_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use fabric_common::{eid, until, until_state, Member, PASSWORD, T};
use integration::dns::DnsServer;
use integration::ejabberd_cluster::EjabberdCluster;
use statebus::{Bus, DeviceState, Mwi, TlsMode, XmppBus, XmppBusConfig};

/// The accounts (all fabric members).
const USERS: &[&str] = &["gw-a", "gw-b", "gw-c", "acd-1", "watcher", "asterisk"];

fn cluster() -> EjabberdCluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_test_writer()
        .try_init();
    EjabberdCluster::start(2, USERS, PASSWORD).unwrap_or_else(|e| panic!("cluster: {e:#}"))
}

fn fabric_jids() -> Vec<String> {
    USERS.iter().map(|u| format!("{u}@fabric.test")).collect()
}

/// An in-process member that knows the cluster nodes `servers`, in that order.
async fn member(user: &str, n: u8, servers: &[SocketAddr]) -> XmppBus {
    let mut c = XmppBusConfig::new(
        &format!("{user}@fabric.test"),
        PASSWORD,
        "pubsub.fabric.test",
        eid(n),
    );
    c.servers = servers.iter().map(ToString::to_string).collect();
    c.tls = TlsMode::Plaintext;
    c.heartbeat_interval = Duration::from_millis(500);
    c.liveness_ttl = Duration::from_secs(3);
    c.iq_timeout = Duration::from_secs(20);
    c.keepalive = Duration::from_secs(10);
    c.reconnect_initial = Duration::from_millis(100);
    c.reconnect_max = Duration::from_secs(1);
    c.site = user.into();
    c.fabric_jids = fabric_jids();
    let b = XmppBus::start(c).expect("bus config");
    assert!(b.wait_online(T).await, "{user} never came online");
    b
}

/// A `statebus` config for the binary: `servers` lines (a list, or SRV settings) as given.
fn write_config(dir: &Path, user: &str, eid: &str, servers: &str) -> std::path::PathBuf {
    let text = format!(
        "[node]\nname = \"{user}\"\nsite = \"{user}\"\nrole = \"gateway\"\neid = \"{eid}\"\n\n\
         [statebus]\nbackend = \"xmpp\"\njid = \"{user}@fabric.test\"\npassword = \"{PASSWORD}\"\n\
         pubsub_service = \"pubsub.fabric.test\"\n{servers}\n\
         heartbeat_interval_secs = 0.5\nliveness_ttl_secs = 3\nreconnect_initial_secs = 0.1\n\
         reconnect_max_secs = 1\nfabric_jids = {:?}\n",
        fabric_jids()
    );
    let p = dir.join(format!("{user}.toml"));
    std::fs::write(&p, text).expect("write config");
    p
}

/// Members on different nodes see each other's device states and MWI, both ways (in-process
/// buses, a `callfabric` process with the single-address `server = …` form, one that finds the
/// cluster by DNS SRV through a private dnsmasq, over STARTTLS). Then `kill -9` of the node site
/// A's members use: they move to the other node (A: a `servers` list; the SRV member: the next
/// SRV target), state reconverges both ways; the killed node comes back, rejoins the cluster,
/// and a member that logs in on it sees the whole fabric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_state_node_death_and_rejoin() {
    let mut c = cluster();
    let (n0, n1) = (c.c2s_addr(0), c.c2s_addr(1));
    // Site A prefers node 0; site B lives on node 1.
    let a = member("gw-a", 1, &[n0, n1]).await;
    let b = member("gw-b", 2, &[n1]).await;
    let w = member("watcher", 3, &[n1]).await;
    // A `callfabric` process finding the cluster by SRV: node 0 has the better priority.
    let dns = DnsServer::start(
        &[
            format!(
                "--srv-host=_xmpp-client._tcp.fabric.test,xmpp0.fabric.test,{},10,100",
                n0.port()
            ),
            format!(
                "--srv-host=_xmpp-client._tcp.fabric.test,xmpp1.fabric.test,{},20,100",
                n1.port()
            ),
            "--host-record=xmpp0.fabric.test,127.0.0.1".into(),
            "--host-record=xmpp1.fabric.test,127.0.0.1".into(),
        ],
        1,
    )
    .expect("dnsmasq");
    let dir = tempfile::tempdir().expect("tempdir");
    let srv_cfg = write_config(
        dir.path(),
        "acd-1",
        "02:00:00:00:00:0c",
        &format!(
            "dns_servers = [\"{}\"]\ntls = \"starttls\"\nca_file = {:?}",
            dns.addr,
            c.ca_cert().display().to_string()
        ),
    );
    let mut srv_member = Member::publish(&srv_cfg, &["PJSIP/s1=INUSE"]);

    a.publish_device_state("PJSIP/a1", DeviceState::InUse);
    b.publish_device_state("PJSIP/b1", DeviceState::Ringing);
    until_state(&w, "PJSIP/a1", DeviceState::InUse).await;
    until_state(&w, "PJSIP/s1", DeviceState::InUse).await;
    until_state(&a, "PJSIP/b1", DeviceState::Ringing).await;
    assert_eq!(a.server(), Some(n0.to_string()), "A starts on node 0");
    assert_eq!(b.server(), Some(n1.to_string()));
    // MWI across the nodes, both ways, and live changes (not only the fetch).
    a.publish_mwi(Mwi::new("1000", "default", 2, 5));
    b.publish_mwi(Mwi::new("2000", "default", 1, 0));
    until("A's MWI at B (node 1)", || {
        b.snapshot().mwi.get("1000@default").map(|m| (m.new, m.old)) == Some((2, 5))
    })
    .await;
    until("B's MWI at A (node 0)", || {
        a.snapshot().mwi.get("2000@default").map(|m| (m.new, m.old)) == Some((1, 0))
    })
    .await;
    a.publish_device_state("PJSIP/a2", DeviceState::Busy);
    until_state(&b, "PJSIP/a2", DeviceState::Busy).await;
    // The binary with the single-address form, on node 1, seen by A on node 0.
    let single = write_config(
        dir.path(),
        "gw-c",
        "02:00:00:00:00:0d",
        &format!("server = \"{n1}\"\ntls = \"plaintext\""),
    );
    let mut single_member = Member::publish(&single, &["PJSIP/c1=BUSY"]);
    until_state(&a, "PJSIP/c1", DeviceState::Busy).await;
    assert!(single_member.alive(), "{}", single_member.stderr());
    // The SRV member logged in on node 0 (priority 10), by name.
    let logged_in = |m: &mut Member, host: &str| {
        m.stderr()
            .lines()
            .any(|l| l.contains("logged in to the XMPP server") && l.contains(host))
    };
    until("the SRV member logs in on xmpp0", || {
        logged_in(&mut srv_member, "xmpp0.fabric.test")
    })
    .await;

    // Crash node 0.
    let connects = a.stats().connects;
    c.kill(0).expect("kill -9 node 0");
    let killed = Instant::now();
    // While A is cut off its changes queue up; they must arrive after the move.
    a.publish_device_state("PJSIP/a1", DeviceState::OnHold);
    until(format!("A moves to node 1 ({:?})", a.stats()), || {
        a.server() == Some(n1.to_string()) && a.is_online() && a.stats().connects > connects
    })
    .await;
    until_state(&w, "PJSIP/a1", DeviceState::OnHold).await;
    until_state(&w, "PJSIP/s1", DeviceState::InUse).await;
    b.publish_device_state("PJSIP/b1", DeviceState::Busy);
    until_state(&a, "PJSIP/b1", DeviceState::Busy).await;
    let reconverged = killed.elapsed();
    eprintln!("node death to reconverged state: {reconverged:?}");
    // The SRV member is heard on node 1 (fresh heartbeats keep it alive at W).
    let s_eid: statebus::Eid = "02:00:00:00:00:0c".parse().expect("eid");
    until("the SRV member heartbeats through node 1", || {
        w.snapshot().peers.get(&s_eid).map(|p| p.1) == Some(true)
    })
    .await;
    until("the SRV member logs in on xmpp1", || {
        logged_in(&mut srv_member, "xmpp1.fabric.test")
    })
    .await;
    assert!(srv_member.alive(), "{}", srv_member.stderr());

    // Node 0 comes back and rejoins; a member logging in there sees the whole fabric.
    c.restart(0).expect("restart node 0");
    let members = c.members_seen_by(1).expect("cluster members");
    assert_eq!(members.len(), 2, "{members:?}");
    let late = member("asterisk", 9, &[n0]).await;
    until_state(&late, "PJSIP/a1", DeviceState::OnHold).await;
    until_state(&late, "PJSIP/b1", DeviceState::Busy).await;
    until_state(&late, "PJSIP/s1", DeviceState::InUse).await;
    // And what is published there reaches node 1's members.
    late.publish_device_state("PJSIP/l1", DeviceState::Ringing);
    until_state(&w, "PJSIP/l1", DeviceState::Ringing).await;
    // Converged and quiet: A stays where it is (no flapping back to node 0).
    let c0 = a.stats().connects;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.stats().connects, c0, "A keeps reconnecting");
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A `[statebus]` section for a site process that knows `servers` (in that order).
fn site_statebus(user: &str, servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "backend = \"xmpp\"\njid = \"{user}@fabric.test\"\npassword = \"{PASSWORD}\"\n\
         servers = [{}]\npubsub_service = \"pubsub.fabric.test\"\ntls = \"plaintext\"\n\
         heartbeat_interval_secs = 0.5\nliveness_ttl_secs = 5\nreconnect_initial_secs = 0.1\n\
         reconnect_max_secs = 1\n\
         fabric_jids = [\"gw-a@fabric.test\", \"gw-b@fabric.test\", \"acd-1@fabric.test\"]\n",
        list.join(", ")
    )
}

/// Polls `gw`'s stderr (its log) until a login on `server` shows up.
fn until_logged_in(gw: &integration::gateway::GatewayProcess, server: SocketAddr) {
    let log = gw.dir().join("gateway.stderr");
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("logged in to the XMPP server") && l.contains(&server.to_string()))
        {
            return;
        }
        assert!(
            t0.elapsed() < T,
            "{} never logged in on {server}:\n{text}",
            gw.spec.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Site A (gateway gw-a, ACD acd-1) sits on node 0 and knows node 1 too; site B's gateway sits
/// on node 1. Devices, registrations, CDRs and queue_log share one PostgreSQL. A caller at A
/// reaches the agent at B through the ACD (across the two XMPP nodes); then node 0 is killed:
/// site A's processes move to node 1, and a caller who enters the queue right after the crash
/// still reaches the agent at B. Node 0 comes back and rejoins.
#[test]
fn calls_across_nodes_and_through_a_node_death_on_shared_postgres() {
    use integration::gateway::{GatewayProcess, GatewaySpec};
    use integration::phones::{answering_phone, assert_passes, caller, uac_scenario};
    use integration::sipp::run_scenario;

    let mut c = EjabberdCluster::start(2, &["gw-a", "gw-b", "acd-1"], PASSWORD)
        .unwrap_or_else(|e| panic!("cluster: {e:#}"));
    let (n0, n1) = (c.c2s_addr(0), c.c2s_addr(1));
    let pg = integration::postgres::Postgres::start().expect("PostgreSQL");
    let url = pg.url();
    let (port_a, port_b, port_acd) = (
        integration::free_udp_port(),
        integration::free_udp_port(),
        integration::free_udp_port(),
    );
    let trunk_to_acd = |prefixes: &str| {
        format!(
            "\n[[gateway.trunk]]\nname = \"acd\"\naddress = \"127.0.0.1:{port_acd}\"\nprefixes = [{prefixes}]\n"
        )
    };
    let mut a = GatewaySpec::new("gw-a", &["1001"]);
    a.qualify_interval_secs = 300.0;
    a.udp_port = Some(port_a);
    a.statebus = site_statebus("gw-a", &[n0, n1]);
    a.node_extra = format!("sip_address = \"127.0.0.1:{port_a}\"");
    a.extra = trunk_to_acd("\"800\"");
    a.database = Some(url.clone());
    let mut b = GatewaySpec::new("gw-b", &["2001"]);
    b.qualify_interval_secs = 300.0;
    b.udp_port = Some(port_b);
    b.statebus = site_statebus("gw-b", &[n1]);
    b.node_extra = format!("sip_address = \"127.0.0.1:{port_b}\"");
    b.extra = trunk_to_acd("");
    b.database = Some(url.clone());
    let mut acd = GatewaySpec::new("acd-1", &[]);
    acd.command = "acd".into();
    acd.statebus = site_statebus("acd-1", &[n0, n1]);
    acd.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{port_acd}"
rtp_ports = "43000-43999"
t1_ms = 100
database = "{url}"

[acd.numbers]
"800" = "support"

[[acd.gateway]]
name = "gw-a"
address = "127.0.0.1:{port_a}"

[[acd.queue]]
name = "support"
strategy = "ringall"
timeout = 10
retry = 1
ringinuse = false
members = ["PJSIP/2001"]
"#
    );
    let gw_a = GatewayProcess::start(binary(), a);
    let mut gw_b = GatewayProcess::start(binary(), b);
    let mut node = GatewayProcess::start(binary(), acd);
    until_logged_in(&gw_a, n0);
    until_logged_in(&node, n0);
    until_logged_in(&gw_b, n1);

    let mut agent = answering_phone(&mut gw_b, "2001", "call_uas.xml", 2);
    gw_b.device("2001", "NOT_INUSE", T);
    node.seen_since(0, "DEVICE PJSIP/2001 NOT_INUSE", T);

    // A call across the nodes: caller at A (node 0), agent at B (node 1).
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("sipp");
    assert_passes(&gw_a, &out, "first caller");
    let first = node.wait_for(T, "the first CONNECT", |l| l.contains("|CONNECT|"));
    assert!(
        first.contains("|PJSIP/2001|CONNECT|"),
        "{first}\n{}",
        node.diag()
    );
    node.wait_for(T, "COMPLETECALLER", |l| l.contains("|COMPLETECALLER|"));

    // Node 0 dies; a caller enters the queue at once.
    let crash = node.mark();
    c.kill(0).expect("kill -9 node 0");
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("sipp");
    assert_passes(&gw_a, &out, "caller after the node's death");
    let second = node.wait_for(T, "the CONNECT after the crash", |l| {
        l.contains("|CONNECT|")
    });
    assert!(
        second.contains("|PJSIP/2001|CONNECT|"),
        "{second}\n{}",
        node.diag()
    );
    assert_passes(
        &gw_b,
        &agent.wait().expect("agent"),
        "the agent at B answered twice",
    );
    until_logged_in(&gw_a, n1);
    until_logged_in(&node, n1);
    // The ACD hears the fabric through node 1: the agent's state during that call reached it
    // after the crash (not from its cache).
    node.seen_since(crash, "DEVICE PJSIP/2001 INUSE", T);

    // Node 0 rejoins.
    c.restart(0).expect("restart node 0");
    assert_eq!(c.members_seen_by(0).expect("members").len(), 2);

    // One PostgreSQL for every site: both gateways' CDRs, the ACD's queue_log, B's
    // registration, the devices of both sites.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = gateway::devices::DeviceStore::open(&url)
            .await
            .expect("open the shared database");
        let queue_log = acd::queue_log::QueueLogStore::open(&url)
            .await
            .expect("queue_log on the shared database");
        let t0 = Instant::now();
        loop {
            let rows = queue_log.rows().await.expect("queue_log rows");
            let cdrs = store.cdrs().await.expect("cdr rows");
            let connects = rows.iter().filter(|r| r.event == "CONNECT").count();
            let nodes: std::collections::BTreeSet<String> =
                cdrs.iter().map(|c| c.node.clone()).collect();
            if connects >= 2 && nodes.contains("gw-a") && nodes.contains("gw-b") {
                break;
            }
            assert!(
                t0.elapsed() < T,
                "shared database: {connects} CONNECTs, CDR nodes {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let devices = store.load_all().await.expect("devices");
        let names: Vec<&str> = devices.iter().map(|d| d.username.as_str()).collect();
        assert!(
            names.contains(&"1001") && names.contains(&"2001"),
            "{names:?}"
        );
        let regs = store
            .load_bindings("gw-b", std::time::SystemTime::now())
            .await
            .expect("registrations");
        assert!(
            regs.iter().any(|r| r.aor.contains("2001")),
            "B's registration of 2001 in the shared database: {regs:?}"
        );
    });
}
