//! End to end across sites: two gateways and an ACD node, each its own `callfabric` process,
//! sharing device state through a real Prosody (XMPP PubSub, res_xmpp format). The caller is
//! at site A; agents are registered at site A and site B. The ACD finds each agent's gateway
//! through the fabric (the publisher of the device's state and its heartbeat's SIP address):
//! its config names only site A's gateway.

use std::path::Path;
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, caller, uac_scenario};
use integration::sipp::run_scenario;
use integration::xmpp_server::{ServerKind, XmppServer};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

fn statebus(s: &XmppServer, user: &str) -> String {
    format!(
        "backend = \"xmpp\"\njid = \"{user}@{domain}\"\npassword = \"secret\"\nserver = \"{server}\"\n\
         pubsub_service = \"{pubsub}\"\ntls = \"starttls\"\nca_file = {ca:?}\n\
         heartbeat_interval_secs = 0.5\nliveness_ttl_secs = 5\n\
         fabric_jids = [\"gw-a@{domain}\", \"gw-b@{domain}\", \"acd-1@{domain}\"]\n",
        domain = s.domain(),
        server = s.c2s_addr(),
        pubsub = s.pubsub_service(),
        ca = s.ca_cert().display().to_string(),
    )
}

#[test]
fn caller_at_site_a_reaches_agents_at_both_sites_in_leastrecent_order() {
    let xmpp = XmppServer::start(ServerKind::Prosody, &["gw-a", "gw-b", "acd-1"], "secret")
        .expect("start Prosody");
    let (port_a, port_b, port_acd) = (free_udp_port(), free_udp_port(), free_udp_port());
    let trunk_to_acd = |prefixes: &str| {
        format!(
            "\n[[gateway.trunk]]\nname = \"acd\"\naddress = \"127.0.0.1:{port_acd}\"\nprefixes = [{prefixes}]\n"
        )
    };
    let mut a = GatewaySpec::new("gw-a", &["1001", "1002"]);
    a.qualify_interval_secs = 300.0;
    a.udp_port = Some(port_a);
    a.statebus = statebus(&xmpp, "gw-a");
    a.node_extra = format!("sip_address = \"127.0.0.1:{port_a}\"");
    a.extra = trunk_to_acd("\"800\"");
    let mut b = GatewaySpec::new("gw-b", &["2001"]);
    b.qualify_interval_secs = 300.0;
    b.udp_port = Some(port_b);
    b.statebus = statebus(&xmpp, "gw-b");
    b.node_extra = format!("sip_address = \"127.0.0.1:{port_b}\"");
    b.extra = trunk_to_acd("");
    let mut acd = GatewaySpec::new("acd-1", &[]);
    acd.command = "acd".into();
    acd.statebus = statebus(&xmpp, "acd-1");
    acd.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{port_acd}"
rtp_ports = "42000-42999"
t1_ms = 100

[acd.numbers]
"800" = "support"

[[acd.gateway]]
name = "gw-a"
address = "127.0.0.1:{port_a}"

[[acd.queue]]
name = "support"
strategy = "leastrecent"
timeout = 10
retry = 1
ringinuse = false
members = ["PJSIP/2001", "PJSIP/1002"]
"#
    );
    let mut gw_a = GatewayProcess::start(binary(), a);
    let mut gw_b = GatewayProcess::start(binary(), b);
    let mut node = GatewayProcess::start(binary(), acd);

    // Agents: 2001 at site B, 1002 at site A; both visible to the ACD through Prosody.
    let mut agent_b = answering_phone(&mut gw_b, "2001", "call_uas.xml", 1);
    let mut agent_a = answering_phone(&mut gw_a, "1002", "call_uas.xml", 1);
    gw_b.device("2001", "NOT_INUSE", WAIT);
    gw_a.device("1002", "NOT_INUSE", WAIT);
    // …and at the ACD (through Prosody): before that, 2001 has no publisher and would be
    // offered through the configured gateway A.
    node.seen_since(0, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    node.seen_since(0, "DEVICE PJSIP/1002 NOT_INUSE", WAIT);

    // First call: neither agent has taken a call; leastrecent takes the first in order (2001,
    // at site B: reached through gw-b, which only the fabric tells the ACD about).
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw_a, &out, "first caller");
    let first = node.wait_for(WAIT, "the first CONNECT", |l| l.contains("|CONNECT|"));
    assert!(
        first.contains("|PJSIP/2001|CONNECT|"),
        "{first}\n{}",
        node.diag()
    );
    node.wait_for(WAIT, "COMPLETECALLER", |l| l.contains("|COMPLETECALLER|"));
    assert_passes(
        &gw_b,
        &agent_b.wait().expect("agent at B"),
        "agent at site B answered",
    );
    // Media crossed: caller → gw-a → ACD → gw-b → agent, and the echo back.
    let at_b = gw_b.call_ended(WAIT);
    assert!(
        at_b.num("b_out") > 50 && at_b.num("b_in") > 50,
        "media at site B: {}",
        at_b.line
    );

    // Second call: 2001 just took a call, 1002 never did → leastrecent picks 1002 at site A.
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw_a, &out, "second caller");
    let second = node.wait_for(WAIT, "the second CONNECT", |l| l.contains("|CONNECT|"));
    assert!(
        second.contains("|PJSIP/1002|CONNECT|"),
        "{second}\n{}",
        node.diag()
    );
    assert_passes(
        &gw_a,
        &agent_a.wait().expect("agent at A"),
        "agent at site A answered",
    );
}
