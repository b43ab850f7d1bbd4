use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

const ASTERISK: &str = "v=0\r\n\
o=- 1774473321 1774473321 IN IP4 192.0.2.10\r\n\
s=Asterisk\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 17082 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:150\r\n\
a=sendrecv\r\n";

// LF-only line ends, as some stacks (and hand-written configs) send.
const BARESIP: &str = "v=0\n\
o=- 2890844526 2890844527 IN IP4 198.51.100.7\n\
s=-\n\
c=IN IP4 198.51.100.7\n\
b=AS:128\n\
t=0 0\n\
a=tool:baresip 3.10.1\n\
m=audio 10406 RTP/AVP 96 9 0 8 101\n\
b=TIAS:64000\n\
a=rtpmap:96 opus/48000/2\n\
a=fmtp:96 stereo=1;sprop-stereo=1\n\
a=rtpmap:9 G722/8000\n\
a=rtpmap:0 PCMU/8000\n\
a=rtpmap:8 PCMA/8000\n\
a=rtpmap:101 telephone-event/8000\n\
a=fmtp:101 0-15\n\
a=rtcp:10407\n\
a=sendrecv\n\
a=label:1\n\
a=ssrc:1234567 cname:4a3b\n\
a=X-nat:0\n";

const SIPP: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
s=-\r\n\
c=IN IP4 127.0.1.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

const WEBRTC: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream1\r\n\
a=ice-options:trickle\r\n\
m=audio 54400 RTP/AVP 111 0 8 110\r\n\
c=IN IP4 203.0.113.77\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0\r\n\
a=candidate:435653019 1 udp 1686052607 203.0.113.77 54400 typ srflx raddr 192.168.0.196 rport 46243\r\n\
a=end-of-candidates\r\n\
a=ice-ufrag:Oyef7uvBlwafI3hT\r\n\
a=ice-pwd:T0teqPLNQQOf+5W+ls+P2p16\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=ssrc:3570614608 cname:4TOk42mSjXCkVIa6\r\n";

// RFC 4317 §2.1 (audio and video 1), offer and answer.
const RFC4317_OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\n\
s=\r\n\
c=IN IP4 host.atlanta.example.com\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 97\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:97 iLBC/8000\r\n\
m=video 51372 RTP/AVP 31 32\r\n\
a=rtpmap:31 H261/90000\r\n\
a=rtpmap:32 MPV/90000\r\n";

const RFC4317_ANSWER: &str = "v=0\r\n\
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com\r\n\
s=\r\n\
c=IN IP4 host.biloxi.example.com\r\n\
t=0 0\r\n\
m=audio 49174 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n\
m=video 49170 RTP/AVP 32\r\n\
a=rtpmap:32 MPV/90000\r\n";

const IPV6: &str = "v=0\r\n\
o=- 1 1 IN IP6 2001:db8::1\r\n\
s=-\r\n\
t=0 0\r\n\
m=audio 4000 RTP/AVP 8 0\r\n\
c=IN IP6 2001:db8::2\r\n\
a=rtcp:4005 IN IP6 2001:db8::3\r\n";

const SAMPLES: &[&str] = &[
    ASTERISK,
    BARESIP,
    SIPP,
    WEBRTC,
    RFC4317_OFFER,
    RFC4317_ANSWER,
    IPV6,
];

fn p(s: &str) -> SessionDescription {
    SessionDescription::parse(s).unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Parsing and round trip
// ---------------------------------------------------------------------------------------------

#[test]
fn samples_round_trip() {
    for s in SAMPLES {
        let sd = p(s);
        let out = sd.to_string();
        assert!(out.ends_with("\r\n"));
        assert!(!out.replace("\r\n", "").contains('\n'), "bare LF in {out}");
        assert_eq!(p(&out), sd, "re-parse differs for\n{s}");
        // Well-ordered CRLF input comes back byte for byte.
        if s.contains("\r\n") {
            assert_eq!(out, *s);
        } else {
            assert_eq!(out, s.replace('\n', "\r\n"));
        }
    }
}

#[test]
fn asterisk_offer_fields() {
    let sd = p(ASTERISK);
    assert_eq!(sd.origin.username, "-");
    assert_eq!(sd.origin_version(), 1774473321);
    assert_eq!(sd.session_name, "Asterisk");
    assert_eq!(sd.media().len(), 1);
    let m = &sd.media()[0];
    assert_eq!(
        (m.kind.as_str(), m.port, m.proto.as_str()),
        ("audio", 17082, "RTP/AVP")
    );
    assert_eq!(m.formats, ["0", "8", "9", "101"]);
    assert_eq!(m.attribute("ptime"), Some("20"));
    assert_eq!(m.attribute("sendrecv"), Some(""));
    assert_eq!(m.attribute("nope"), None);
    assert_eq!(m.attributes("rtpmap").count(), 4);
    assert_eq!(m.connection(), None);
    assert_eq!(sd.rtp_endpoint(0), Some(sa("192.0.2.10:17082")));
    assert_eq!(sd.rtcp_endpoint(0), Some(sa("192.0.2.10:17083")));
    assert_eq!(sd.rtp_endpoint(1), None);
    let names: Vec<String> = m.codecs().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["PCMU", "PCMA", "G722", "telephone-event"]);
    let te = m.codec("TELEPHONE-EVENT").unwrap();
    assert_eq!((te.payload_type, te.clock_rate), (101, 8000));
    assert_eq!(te.fmtp.as_deref(), Some("0-16"));
}

#[test]
fn baresip_offer_fields() {
    let sd = p(BARESIP);
    assert_eq!(sd.bandwidths().collect::<Vec<_>>(), ["AS:128"]);
    assert_eq!(sd.attribute("tool"), Some("baresip 3.10.1"));
    let m = &sd.media()[0];
    assert_eq!(m.bandwidths().collect::<Vec<_>>(), ["TIAS:64000"]);
    let opus = &m.codecs()[0];
    assert_eq!(
        (
            opus.payload_type,
            opus.name.as_str(),
            opus.clock_rate,
            opus.channels
        ),
        (96, "opus", 48000, Some(2))
    );
    assert_eq!(opus.fmtp.as_deref(), Some("stereo=1;sprop-stereo=1"));
    assert_eq!(sd.rtcp_endpoint(0), Some(sa("198.51.100.7:10407")));
    // Unknown attributes survive in order.
    let out = sd.to_string();
    let label = out.find("a=label:1").unwrap();
    let ssrc = out.find("a=ssrc:1234567").unwrap();
    let nat = out.find("a=X-nat:0").unwrap();
    assert!(label < ssrc && ssrc < nat);
}

#[test]
fn sipp_and_static_defaults() {
    let sd = p(SIPP);
    assert_eq!(sd.origin.session_id, "53655765");
    assert_eq!(sd.rtp_endpoint(0), Some(sa("127.0.1.1:6000")));
    // Static payload types without rtpmap get the RFC 3551 defaults.
    let sd = p(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                m=audio 5000 RTP/AVP 18 3 8 0 9 13 96\r\n",
    );
    let c = sd.media()[0].codecs();
    let got: Vec<(u8, &str, u32)> = c
        .iter()
        .map(|c| (c.payload_type, c.name.as_str(), c.clock_rate))
        .collect();
    // 96 has no rtpmap: skipped.
    assert_eq!(
        got,
        [
            (18, "G729", 8000),
            (3, "GSM", 8000),
            (8, "PCMA", 8000),
            (0, "PCMU", 8000),
            (9, "G722", 8000),
            (13, "CN", 8000)
        ]
    );
}

#[test]
fn webrtc_offer_fields() {
    let sd = p(WEBRTC);
    assert_eq!(sd.rtp_endpoint(0), Some(sa("203.0.113.77:54400")));
    // a=rtcp with the unspecified WebRTC placeholder address: no usable RTCP destination.
    assert_eq!(sd.rtcp_endpoint(0), None);
    assert_eq!(sd.media()[0].attributes("candidate").count(), 2);
    assert_eq!(sd.attribute("msid-semantic"), Some(" WMS stream1"));
}

#[test]
fn ipv6_and_host_names() {
    let sd = p(IPV6);
    let ip6: IpAddr = "2001:db8::2".parse().unwrap();
    assert_eq!(sd.media()[0].connection(), Some(ip6));
    assert_eq!(sd.rtp_endpoint(0), Some(SocketAddr::new(ip6, 4000)));
    assert_eq!(sd.rtcp_endpoint(0), Some(sa("[2001:db8::3]:4005")));
    // Host names parse and round-trip but give no socket address.
    let sd = p(RFC4317_OFFER);
    assert_eq!(
        sd.connection.as_ref().unwrap().address,
        "host.atlanta.example.com"
    );
    assert_eq!(sd.rtp_endpoint(0), None);
}

#[test]
fn lenient_input_is_accepted() {
    // Blank lines, trailing spaces, double spaces, a= before t=, no t=, unknown line type,
    // port count.
    let s = "v=0\n\no=-  1 2 IN IP4 10.0.0.1 \ns=\nc=IN IP4 10.0.0.1\na=foo\nt=0 0\ny=whatever\n\
             m=audio 5000/2 RTP/AVP 0\na=recvonly  \n\n";
    let sd = p(s);
    assert_eq!(sd.origin.session_version, 2);
    assert_eq!(sd.media()[0].port_count, Some(2));
    assert_eq!(sd.direction(0), Direction::RecvOnly);
    assert!(sd
        .other
        .iter()
        .any(|l| l.kind == 'y' && l.value == "whatever"));
    assert_eq!(p(&sd.to_string()), sd);
    assert!(SessionDescription::parse("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n").is_ok());
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn err(s: &str) -> SdpError {
    SessionDescription::parse(s).unwrap_err()
}

#[test]
fn errors_carry_line_numbers() {
    let e = err("o=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n");
    assert_eq!(e, SdpError::MissingVersion { line: 1 });
    assert_eq!(e.line(), 1);
    assert!(e.to_string().starts_with("line 1:"));

    assert!(matches!(err(""), SdpError::Empty { .. }));
    assert!(matches!(
        err("v=1\r\n"),
        SdpError::UnsupportedVersion { line: 1, .. }
    ));

    let base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n";
    let e = err(&format!("{base}m=audio 5000 RTP/AVP\r\n"));
    assert!(matches!(e, SdpError::BadMedia { line: 5, .. }), "{e:?}");
    let e = err(&format!("{base}m=audio\r\n"));
    assert!(matches!(e, SdpError::BadMedia { line: 5, .. }), "{e:?}");
    let e = err(&format!("{base}m=audio 70000 RTP/AVP 0\r\n"));
    assert_eq!(
        e,
        SdpError::BadPort {
            line: 5,
            value: "70000".into()
        }
    );
    let e = err(&format!("{base}m=audio -1 RTP/AVP 0\r\n"));
    assert!(matches!(e, SdpError::BadPort { line: 5, .. }));
    let e = err(&format!("{base}m=audio 5000/x RTP/AVP 0\r\n"));
    assert!(matches!(e, SdpError::BadPort { line: 5, .. }));
    let e = err(&format!("{base}m=audio 5000 RTP/AVP 0\r\nc=IN IP4\r\n"));
    assert!(matches!(e, SdpError::BadConnection { line: 6, .. }));
    let e = err(&format!("{base}m=audio 5000 RTP/AVP 0\r\na=\r\n"));
    assert!(matches!(e, SdpError::BadAttribute { line: 6, .. }));
    let e = err(&format!("{base}garbage\r\n"));
    assert!(matches!(e, SdpError::Syntax { line: 5, .. }));
    let e = err(&format!("{base}a=x\0y\r\n"));
    assert!(matches!(e, SdpError::Syntax { line: 5, .. }));
    let e = err(&format!("{base}a=x\ry\r\n"));
    assert!(matches!(e, SdpError::Syntax { line: 5, .. }));
    let e = err(&format!("{base}m=audio 5000 RTP/AVP 0\r\ns=again\r\n"));
    assert_eq!(
        e,
        SdpError::Misplaced {
            line: 6,
            field: 's'
        }
    );
    let e = err(&format!("{base}o=- 1 1 IN IP4 1.2.3.4\r\n"));
    assert_eq!(
        e,
        SdpError::Duplicate {
            line: 5,
            field: 'o'
        }
    );
    let e = err("v=0\r\no=- 1 x IN IP4 1.2.3.4\r\ns=-\r\n");
    assert!(matches!(e, SdpError::BadOrigin { line: 2, .. }));
    let e = err("v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n");
    assert!(matches!(e, SdpError::BadOrigin { line: 2, .. }));
    let e = err("v=0\r\ns=-\r\nt=0 0\r\n");
    assert_eq!(
        e,
        SdpError::Missing {
            line: 3,
            field: 'o'
        }
    );
    let e = err("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n");
    assert_eq!(
        e,
        SdpError::Missing {
            line: 3,
            field: 's'
        }
    );
}

#[test]
fn non_utf8_is_rejected_with_line() {
    let mut b = ASTERISK.as_bytes().to_vec();
    let at = ASTERISK.find("s=Asterisk").unwrap() + 3;
    b[at] = 0xff;
    assert_eq!(
        SessionDescription::parse_bytes(&b),
        Err(SdpError::NotUtf8 { line: 3 })
    );
    assert_eq!(
        SessionDescription::parse_bytes(ASTERISK.as_bytes()),
        Ok(p(ASTERISK))
    );
    let big = vec![b'a'; MAX_SDP_SIZE + 1];
    assert!(matches!(
        SessionDescription::parse_bytes(&big),
        Err(SdpError::TooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Anchoring and origin
// ---------------------------------------------------------------------------------------------

#[test]
fn anchor_rewrites_connection_ports_rtcp_and_strips_ice() {
    let mut sd = p(WEBRTC);
    let us = v4(10, 1, 1, 1);
    sd.anchor(us, &[40000]);
    let out = sd.to_string();
    assert!(out.contains("c=IN IP4 10.1.1.1\r\n"));
    assert!(!out.contains("203.0.113.77"));
    assert!(out.contains("m=audio 40000 RTP/AVP 111 0 8 110\r\n"));
    assert!(out.contains("a=rtcp:40001\r\n"));
    for gone in [
        "candidate",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "end-of-candidates",
        "rtcp-mux",
    ] {
        assert!(!out.contains(&format!("a={gone}")), "{gone} left in\n{out}");
    }
    // Everything else is kept, in order.
    assert!(out.contains("a=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111"));
    assert_eq!(sd.rtp_endpoint(0), Some(sa("10.1.1.1:40000")));
    assert_eq!(sd.rtcp_endpoint(0), Some(sa("10.1.1.1:40001")));
    assert_eq!(p(&out), sd);
}

#[test]
fn anchor_multi_stream_rejected_and_ipv6() {
    let mut sd = p(RFC4317_OFFER);
    sd.media_mut()[1].port = 0; // already rejected video stays rejected
    sd.anchor("2001:db8::9".parse().unwrap(), &[30000, 30002]);
    assert_eq!(sd.media()[0].port, 30000);
    assert_eq!(sd.media()[1].port, 0);
    assert!(sd.to_string().contains("c=IN IP6 2001:db8::9\r\n"));
    // A stream without a port entry cannot be relayed: rejected.
    let mut sd = p(RFC4317_OFFER);
    sd.anchor(v4(10, 0, 0, 1), &[30000]);
    assert_eq!(sd.media()[1].port, 0);
    // Media-level c= dropped, session c= used; a=rtcp with address rewritten to the port only.
    let mut sd = p(IPV6);
    sd.anchor(v4(10, 0, 0, 1), &[20000]);
    assert_eq!(sd.media()[0].connection, None);
    assert_eq!(sd.media()[0].attribute("rtcp"), Some("20001"));
    assert_eq!(sd.rtcp_endpoint(0), Some(sa("10.0.0.1:20001")));
}

#[test]
fn set_origin_and_version() {
    let mut sd = p(ASTERISK);
    sd.set_origin("callfabric", 42, 7, v4(10, 0, 0, 1));
    assert_eq!(sd.origin_version(), 7);
    assert!(sd
        .to_string()
        .contains("o=callfabric 42 7 IN IP4 10.0.0.1\r\n"));
    sd.set_origin("has space", 42, 8, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert!(sd.to_string().contains("o=- 42 8 IN IP6 ::1\r\n"));
}

#[test]
fn retain_codecs_and_set_attribute() {
    let mut sd = p(BARESIP);
    let m = &mut sd.media_mut()[0];
    assert!(m.retain_codecs(|c| c.name != "opus" && c.name != "G722"));
    assert_eq!(m.formats, ["0", "8", "101"]);
    assert!(!m
        .attributes("rtpmap")
        .any(|v| v.starts_with("96 ") || v.starts_with("9 ")));
    assert!(!m.attributes("fmtp").any(|v| v.starts_with("96 ")));
    assert_eq!(
        m.codec("telephone-event").unwrap().fmtp.as_deref(),
        Some("0-15")
    );
    // Refuses to empty the format list.
    assert!(!m.retain_codecs(|_| false));
    assert_eq!(m.formats, ["0", "8", "101"]);
    m.set_attribute("ptime", Some("30"));
    m.set_attribute("rtpmap", Some("0 PCMU/8000"));
    assert_eq!(m.attributes("rtpmap").collect::<Vec<_>>(), ["0 PCMU/8000"]);
    m.remove_attributes("ssrc");
    assert!(!m.has_attribute("ssrc"));
    assert_eq!(m.attributes.last().unwrap(), &Attribute::new("ptime", "30"));
    assert_eq!(p(&sd.to_string()), sd);
}

// ---------------------------------------------------------------------------------------------
// Direction and hold
// ---------------------------------------------------------------------------------------------

fn with(session_attrs: &str, conn: &str, media: &str) -> SessionDescription {
    p(&format!(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\n{session_attrs}{media}"
    ))
}

#[test]
fn hold_detection() {
    let audio = |a: &str| format!("m=audio 5000 RTP/AVP 0\r\n{a}");
    assert!(!with("", "10.0.0.2", &audio("")).is_hold());
    assert!(!with("", "10.0.0.2", &audio("a=sendrecv\r\n")).is_hold());
    assert!(!with("", "10.0.0.2", &audio("a=recvonly\r\n")).is_hold());
    assert!(with("", "10.0.0.2", &audio("a=sendonly\r\n")).is_hold());
    assert!(with("", "10.0.0.2", &audio("a=inactive\r\n")).is_hold());
    // RFC 2543 hold.
    let sd = with("", "0.0.0.0", &audio(""));
    assert!(sd.is_hold());
    assert_eq!(sd.direction(0), Direction::SendRecv);
    assert_eq!(sd.rtp_endpoint(0), None);
    // Session-level direction applies, media-level wins.
    let sd = with("a=sendonly\r\n", "10.0.0.2", &audio(""));
    assert_eq!(sd.direction(0), Direction::SendOnly);
    assert!(sd.is_hold());
    let sd = with("a=sendonly\r\n", "10.0.0.2", &audio("a=sendrecv\r\n"));
    assert_eq!(sd.direction(0), Direction::SendRecv);
    assert!(!sd.is_hold());
    // Media-level c=0.0.0.0 overrides a real session c=.
    assert!(with("", "10.0.0.2", &audio("c=IN IP4 0.0.0.0\r\n")).is_hold());
    // Every audio stream must be held; rejected (port 0) ones count as held; video ignored.
    let two = format!(
        "{}{}",
        audio("a=sendonly\r\n"),
        "m=audio 5002 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\n"
    );
    assert!(!with("", "10.0.0.2", &two).is_hold());
    let two = format!(
        "{}{}",
        audio("a=sendonly\r\n"),
        "m=audio 0 RTP/AVP 0\r\nm=video 6000 RTP/AVP 31\r\n"
    );
    assert!(with("", "10.0.0.2", &two).is_hold());
    // No audio at all is not a hold.
    assert!(!with("", "10.0.0.2", "m=video 6000 RTP/AVP 31\r\n").is_hold());
}

#[test]
fn set_direction_pushes_session_level_down() {
    let media = "m=audio 5000 RTP/AVP 0\r\na=ptime:20\r\nm=audio 6000 RTP/AVP 0\r\n";
    let mut sd = with("a=sendonly\r\n", "10.0.0.2", media);
    sd.set_direction(0, Direction::SendRecv);
    assert_eq!(sd.direction(0), Direction::SendRecv);
    assert_eq!(sd.direction(1), Direction::SendOnly);
    assert!(sd.attributes.is_empty());
    sd.set_direction(1, Direction::Inactive);
    assert_eq!(sd.media()[1].attributes("inactive").count(), 1);
    assert_eq!(sd.media()[1].attributes("sendonly").count(), 0);
    sd.set_direction(9, Direction::Inactive); // out of range: no-op
    assert_eq!(p(&sd.to_string()), sd);
    assert_eq!(Direction::SendOnly.reverse(), Direction::RecvOnly);
    assert_eq!(Direction::RecvOnly.reverse(), Direction::SendOnly);
    assert_eq!(Direction::Inactive.reverse(), Direction::Inactive);
    assert_eq!(Direction::SendRecv.as_str(), "sendrecv");
}

// ---------------------------------------------------------------------------------------------
// Offer / answer
// ---------------------------------------------------------------------------------------------

const SUPPORTED: &[&str] = &["PCMU", "PCMA", "telephone-event"];

#[test]
fn answer_intersects_and_rejects_video() {
    let mut o = p(RFC4317_OFFER);
    o.media_mut()[0].formats.push("101".into());
    o.media_mut()[0]
        .attributes
        .push(Attribute::new("rtpmap", "101 telephone-event/8000"));
    o.media_mut()[0]
        .attributes
        .push(Attribute::new("fmtp", "101 0-15"));
    o.media_mut()[0]
        .attributes
        .push(Attribute::flag("sendonly"));
    let us = v4(10, 0, 0, 5);
    let a = answer(&o, us, &[7000, 7002], SUPPORTED, ("gw", 9, 1)).unwrap();
    assert_eq!(a.media().len(), 2);
    let m = &a.media()[0];
    assert_eq!(m.port, 7000);
    assert_eq!(m.formats, ["0", "8", "101"]);
    assert_eq!(
        m.codec("telephone-event").unwrap().fmtp.as_deref(),
        Some("0-15")
    );
    assert_eq!(a.direction(0), Direction::RecvOnly);
    let v = &a.media()[1];
    assert_eq!((v.kind.as_str(), v.port), ("video", 0));
    assert_eq!(v.formats, ["31", "32"]);
    assert_eq!(a.rtp_endpoint(0), Some(sa("10.0.0.5:7000")));
    assert_eq!(a.origin.username, "gw");
    assert_eq!(p(&a.to_string()), a);
}

#[test]
fn answer_keeps_offerer_numbers_and_order() {
    // baresip: opus 96 first (unsupported), then G722, PCMU, PCMA, telephone-event.
    let o = p(BARESIP);
    let a = answer(
        &o,
        v4(10, 0, 0, 5),
        &[7000],
        &["PCMA", "PCMU", "telephone-event"],
        ("-", 1, 1),
    )
    .unwrap();
    assert_eq!(a.media()[0].formats, ["0", "8", "101"]);
    assert_eq!(a.direction(0), Direction::SendRecv);
    // WebRTC offer: telephone-event/48000 does not match PCMU/PCMA's 8000 clock: dropped.
    let a = answer(&p(WEBRTC), v4(10, 0, 0, 5), &[7000], SUPPORTED, ("-", 1, 1)).unwrap();
    assert_eq!(a.media()[0].formats, ["0", "8"]);
}

#[test]
fn answer_none_without_common_codec() {
    let o = p(SIPP);
    assert!(answer(&o, v4(10, 0, 0, 5), &[7000], &["G722"], ("-", 1, 1)).is_none());
    // telephone-event alone is not enough.
    assert!(answer(
        &p(ASTERISK),
        v4(1, 1, 1, 1),
        &[7000],
        &["telephone-event"],
        ("-", 1, 1)
    )
    .is_none());
    // SRTP is not something the gateway endpoint does.
    let srtp = SIPP.replace("RTP/AVP", "RTP/SAVP");
    assert!(answer(&p(&srtp), v4(1, 1, 1, 1), &[7000], SUPPORTED, ("-", 1, 1)).is_none());
}

#[test]
fn offer_builds_valid_sdp() {
    let o = offer(
        v4(10, 0, 0, 5),
        8000,
        &["pcma", "PCMU", "G722", "telephone-event", "x"],
        ("gw", 3, 4),
    );
    let s = o.to_string();
    assert_eq!(p(&s), o);
    let m = &o.media()[0];
    assert_eq!(m.formats, ["8", "0", "9", "101"]);
    assert_eq!(m.attribute("ptime"), Some("20"));
    assert_eq!(o.direction(0), Direction::SendRecv);
    assert_eq!(
        m.codec("telephone-event").unwrap().fmtp.as_deref(),
        Some("0-16")
    );
    assert!(
        s.starts_with("v=0\r\no=gw 3 4 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n")
    );
    // And our answer to our own offer accepts it.
    let a = answer(&o, v4(10, 0, 0, 6), &[9000], SUPPORTED, ("gw", 1, 1)).unwrap();
    assert_eq!(a.media()[0].formats, ["8", "0", "101"]);
    // Nothing known: falls back to PCMU.
    assert_eq!(
        offer(v4(1, 1, 1, 1), 1, &["opus"], ("-", 1, 1)).media()[0].formats,
        ["0"]
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzz
// ---------------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"=",
    b":",
    b"/",
    b" ",
    b"\t",
    b"\0",
    b"0",
    b"65535",
    b"65536",
    b"m=audio 0 RTP/AVP 0\r\n",
    b"c=IN IP4 0.0.0.0\r\n",
    b"a=rtcp:",
    b"a=sendonly\r\n",
    b"a=rtpmap:96 ",
    b"/48000/2",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x80\x83",
    b"v=0\r\n",
    b"o=- 1 1 IN IP4 1.2.3.4\r\n",
    b"c=IN IP6 ::\r\n",
    b"18446744073709551616",
];

fn check(bytes: &[u8], parsed: &mut usize) {
    if let Ok(sd) = SessionDescription::parse_bytes(bytes) {
        *parsed += 1;
        let out = sd.to_string();
        assert_eq!(
            SessionDescription::parse(&out).as_ref(),
            Ok(&sd),
            "input {:?}",
            String::from_utf8_lossy(bytes)
        );
        // Exercise every accessor; none may panic.
        let _ = sd.is_hold();
        for i in 0..=sd.media().len() {
            let _ = (sd.rtp_endpoint(i), sd.rtcp_endpoint(i), sd.direction(i));
            if let Some(m) = sd.media().get(i) {
                let _ = (m.codecs(), m.connection());
            }
        }
        let _ = answer(
            &sd,
            v4(10, 0, 0, 1),
            &[1000, 1002, 65535],
            SUPPORTED,
            ("-", 1, 1),
        );
        let mut a = sd.clone();
        a.anchor(v4(10, 0, 0, 1), &[65535, 0, 2000]);
        a.set_direction(0, Direction::Inactive);
        if let Some(m) = a.media_mut().first_mut() {
            m.retain_codecs(|c| c.payload_type % 2 == 0);
            m.set_attribute("ptime", Some("20"));
        }
        assert_eq!(SessionDescription::parse(&a.to_string()).as_ref(), Ok(&a));
    }
}

#[test]
fn fuzz_mutations_never_panic_and_round_trip() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut parsed = 0usize;
    for _ in 0..20_000 {
        let seed = SAMPLES[rng.below(SAMPLES.len())];
        let mut b = seed.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(b.len() + 1);
            match rng.below(5) {
                0 if at < b.len() => b[at] = rng.next() as u8,
                1 if at < b.len() => {
                    b.remove(at);
                }
                2 => {
                    let ins = INTERESTING[rng.below(INTERESTING.len())];
                    b.splice(at..at, ins.iter().copied());
                }
                3 if at < b.len() => {
                    // Swap two bytes: reorders fields and lines.
                    let other = rng.below(b.len());
                    b.swap(at, other);
                }
                _ => b.truncate(at),
            }
        }
        check(&b, &mut parsed);
    }
    // The mutations must not all be rejected, or the round-trip check proves nothing.
    eprintln!("mutants parsed: {parsed}");
    assert!(parsed > 2_000, "only {parsed} mutants parsed");
}

#[test]
fn fuzz_random_lines_never_panic() {
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    let kinds = b"vosicbtrzkamuepxy";
    let words: &[&str] = &[
        "IN",
        "IP4",
        "IP6",
        "0",
        "5000",
        "65535",
        "70000",
        "5000/2",
        "RTP/AVP",
        "audio",
        "rtpmap:0",
        "PCMU/8000",
        "0.0.0.0",
        "::1",
        "10.0.0.1",
        "rtcp:9",
        "sendonly",
        "-",
        "",
        "é",
        "\t",
        "a",
        "=",
        ":",
    ];
    let mut parsed = 0usize;
    for _ in 0..5_000 {
        let mut s = String::from("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\n");
        for _ in 0..rng.below(12) {
            s.push(kinds[rng.below(kinds.len())] as char);
            s.push('=');
            for w in 0..rng.below(6) {
                if w > 0 {
                    s.push(' ');
                }
                s.push_str(words[rng.below(words.len())]);
            }
            s.push_str(if rng.below(2) == 0 { "\r\n" } else { "\n" });
        }
        check(s.as_bytes(), &mut parsed);
    }
    eprintln!("random parsed: {parsed}");
    assert!(parsed > 100, "only {parsed} parsed");
}
