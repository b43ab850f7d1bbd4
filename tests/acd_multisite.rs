//! End to end across sites: two gateways and an ACD node, each its own `callfabric` process,
//! sharing device state through a real XMPP server (Prosody and ejabberd, the same scenario on
//! each; XMPP PubSub, res_xmpp format). The caller is
//! at site A; agents are registered at site A and site B. The ACD finds each agent's gateway
//! through the fabric (the publisher of the device's state and its heartbeat's SIP address):
//! its config names only site A's gateway.

use std::path::Path;
use std::time::Duration;

use integration::phones::{answering_phone, assert_passes, caller, uac_scenario};
use integration::sipp::run_scenario;
use integration::site::{Bus, TwoSites};
use integration::xmpp_server::{ServerKind, XmppServer};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

#[test]
fn caller_at_site_a_reaches_agents_at_both_sites_in_leastrecent_order() {
    leastrecent_across_sites(ServerKind::Prosody);
}

#[test]
fn caller_at_site_a_reaches_agents_at_both_sites_in_leastrecent_order_on_ejabberd() {
    leastrecent_across_sites(ServerKind::Ejabberd);
}

fn leastrecent_across_sites(kind: ServerKind) {
    let xmpp = XmppServer::start(kind, &["gw-a", "gw-b", "acd-1"], "secret")
        .unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    let sites = TwoSites::new(
        &xmpp,
        &Bus::new(5.0, &["gw-a", "gw-b", "acd-1"]),
        "42000-42999",
        "",
        "strategy = \"leastrecent\"\ntimeout = 10\nretry = 1\nringinuse = false\n\
         members = [\"PJSIP/2001\", \"PJSIP/1002\"]",
    );
    let (mut gw_a, mut gw_b, mut node) = sites.start(binary());

    // Agents: 2001 at site B, 1002 at site A; both visible to the ACD through Prosody.
    let mut agent_b = answering_phone(&mut gw_b, "2001", "call_uas.xml", 1);
    let mut agent_a = answering_phone(&mut gw_a, "1002", "call_uas.xml", 1);
    gw_b.device("2001", "NOT_INUSE", WAIT);
    gw_a.device("1002", "NOT_INUSE", WAIT);
    // The ACD's bus may come online after its `acd ready` line (ejabberd is slower): until it
    // has the agents' states it cannot know 2001 lives at site B.
    for user in ["2001", "1002"] {
        node.seen_since(0, &format!("DEVICE PJSIP/{user} NOT_INUSE"), WAIT);
    }

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
