//! End to end: trunks named by a domain, located by RFC 3263 (NAPTR → SRV → A) through a
//! private dnsmasq that the test starts on a free loopback port (`[gateway] dns_servers`).
//!
//! * An ITSP trunk `itsp.test` whose NAPTR points to `_sip._udp.itsp.test`, whose SRV lists a
//!   first target nobody answers on and a second one (a SIPp registrar): the gateway's
//!   REGISTER times out at the first and then registers at the second.
//! * A trunk `pstn.test` with SRV only: the first target answers the INVITE 503, the gateway
//!   sends it on to the second, which answers; the call completes with media both ways. The
//!   next call goes straight to the second target.

use std::path::Path;
use std::time::Duration;

use integration::dns::DnsServer;
use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller_ports, scenario, uac_scenario, STREAM_PACKETS};
use integration::sipp::{run_scenario, SippOpts, SippProcess};

const STATE_TIMEOUT: Duration = Duration::from_secs(10);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// dnsmasq options: SRV `_sip._udp.<domain>` → `<host>.<domain>:<port>` with priority
/// 10, 20, … in the order given, each host at 127.0.0.1.
fn srv_records(domain: &str, targets: &[(&str, u16)]) -> Vec<String> {
    let mut v = Vec::new();
    for (i, (host, port)) in targets.iter().enumerate() {
        let prio = 10 * (i + 1);
        v.push(format!(
            "--srv-host=_sip._udp.{domain},{host}.{domain},{port},{prio},100"
        ));
        v.push(format!("--host-record={host}.{domain},127.0.0.1"));
    }
    v
}

#[test]
fn trunk_registers_at_the_next_srv_target_when_the_first_is_down() {
    let dead = free_udp_port(); // nothing listens there
    let live = free_udp_port();
    let mut records = srv_records("itsp.test", &[("sip1", dead), ("sip2", live)]);
    records.push("--naptr-record=itsp.test,10,50,s,SIP+D2U,,_sip._udp.itsp.test".into());
    let dns = DnsServer::start(&records, 30).expect("start dnsmasq");
    let mut registrar = SippProcess::spawn(
        &scenario("itsp_registrar_ok.xml"),
        None,
        &SippOpts {
            local_port: Some(live),
            timeout: Duration::from_secs(60),
            ..SippOpts::default()
        },
    )
    .expect("start the SIPp registrar");
    let mut s = GatewaySpec::new("gw-dns", &["1001"]);
    // The retry after a failed registration is 30 × the qualify interval (3 s).
    s.qualify_interval_secs = 0.1;
    s.extra = format!(
        "dns_servers = [\"{}\"]\n\n[[gateway.trunk]]\nname = \"itsp\"\naddress = \"itsp.test\"\n\
         username = \"2999\"\npassword = \"secret\"\nregister = true\nregister_expires = 60\n",
        dns.addr
    );
    let gw = GatewayProcess::start(binary(), s);
    let out = registrar.wait().expect("registrar outcome");
    assert!(
        out.passed(),
        "the registrar at the second SRV target got no REGISTER for sip:itsp.test\n{}\n{}\n{}",
        out.describe(),
        gw.diag(),
        dns.diag()
    );
    // The gateway asked for the NAPTR, the SRV it points to, and the targets' addresses.
    let log = std::fs::read_to_string(dns.dir().join("dnsmasq.log")).unwrap_or_default();
    for q in [
        "query[NAPTR] itsp.test",
        "query[SRV] _sip._udp.itsp.test",
        "sip2.itsp.test",
    ] {
        assert!(log.contains(q), "no {q:?} in the DNS log:\n{}", dns.diag());
    }
}

#[test]
fn call_goes_to_the_next_srv_target_after_a_503() {
    let (first, second) = (free_udp_port(), free_udp_port());
    let dns = DnsServer::start(
        &srv_records("pstn.test", &[("a", first), ("b", second)]),
        30,
    )
    .expect("start dnsmasq");
    let uas = |port: u16, scenario_name: &str, calls: u32| {
        SippProcess::spawn(
            &scenario(scenario_name),
            None,
            &SippOpts {
                local_port: Some(port),
                calls,
                timeout: Duration::from_secs(60),
                extra_args: vec![
                    "-rtp_echo".into(),
                    "-mp".into(),
                    free_udp_port().to_string(),
                ],
                ..SippOpts::default()
            },
        )
        .expect("start a SIPp trunk target")
    };
    let mut overloaded = uas(first, "call_uas_503.xml", 1);
    let mut answering = uas(second, "call_uas.xml", 2);
    let mut s = GatewaySpec::new("gw-dns", &["1001"]);
    s.qualify_interval_secs = 300.0;
    s.extra = format!(
        "dns_servers = [\"{}\"]\n\n[[gateway.trunk]]\nname = \"pstn\"\naddress = \"pstn.test\"\n\
         prefixes = [\"9\"]\nstrip = 1\n",
        dns.addr
    );
    let mut gw = GatewayProcess::start(binary(), s);
    // The trunk is refused (503) until its first resolution, which the gateway logs.
    let stderr = gw.dir().join("gateway.stderr");
    integration::wait_until(STATE_TIMEOUT, "the trunk's resolution", || {
        std::fs::read_to_string(&stderr).is_ok_and(|t| t.contains("trunk resolved"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gw.diag(), dns.diag()));
    let call = |gw: &GatewayProcess| {
        let media_port = integration::free_media_port();
        let out = run_scenario(
            &uac_scenario(gw.dir()),
            gw.udp,
            caller_ports("1001", "9123", media_port, media_port),
        )
        .expect("run sipp");
        assert_passes(gw, &out, "caller dials 9123 through the pstn.test trunk");
    };
    call(&gw);
    let o = overloaded.wait().expect("first target outcome");
    assert!(
        o.passed(),
        "the first SRV target got no INVITE\n{}\n{}",
        o.describe(),
        dns.diag()
    );
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    assert_eq!(ended.num("a_in"), STREAM_PACKETS, "{}", ended.line);
    assert_eq!(ended.num("b_out"), STREAM_PACKETS, "{}", ended.line);

    // The target that answered 503 is tried last for a while: the next call goes straight to
    // the second one, and nothing reaches the first target's port.
    let watch = std::net::UdpSocket::bind(("127.0.0.1", first)).expect("bind the first port");
    watch.set_nonblocking(true).expect("nonblocking");
    call(&gw);
    let mut buf = [0u8; 2048];
    let stray = watch.recv_from(&mut buf).ok().map(|(n, _)| n);
    assert_eq!(stray, None, "a request reached the target that had failed");
    let o = answering.wait().expect("second target outcome");
    assert!(
        o.passed(),
        "the second SRV target did not take both calls\n{}\n{}",
        o.describe(),
        gw.diag()
    );
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
}
