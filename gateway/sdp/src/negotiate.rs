//! RFC 3264 offer/answer for the gateway's own endpoint (prompts, ACD-originated calls).

use std::net::IpAddr;

use super::{Attribute, Codec, Connection, Direction, Media, OtherLine, SessionDescription};

/// Codecs [`offer`] knows how to describe: (name, payload type, clock rate, fmtp).
const OFFERABLE: &[(&str, u8, u32, Option<&str>)] = &[
    ("PCMU", 0, 8000, None),
    ("PCMA", 8, 8000, None),
    ("G722", 9, 8000, None),
    ("G729", 18, 8000, Some("annexb=no")),
    ("telephone-event", 101, 8000, Some("0-16")),
];

/// Encodings that carry no voice: a stream offering only these is not acceptable.
fn is_auxiliary(name: &str) -> bool {
    name.eq_ignore_ascii_case("telephone-event") || name.eq_ignore_ascii_case("CN")
}

fn rtpmap_value(c: &Codec) -> String {
    match c.channels {
        Some(ch) if ch > 1 => format!("{} {}/{}/{}", c.payload_type, c.name, c.clock_rate, ch),
        _ => format!("{} {}/{}", c.payload_type, c.name, c.clock_rate),
    }
}

/// RFC 3264 answer from the gateway's own endpoint.
///
/// For each offered `m=` line, in order: if it is audio over plain RTP (`RTP/AVP` or
/// `RTP/AVPF`: the endpoint does no SRTP/DTLS), has a non-zero port, a port in `ports` and at
/// least one voice codec in `supported` (encoding names, ASCII case-insensitive, in our
/// preference order — preference is not used to reorder, the offerer's order is kept), the
/// answer has the same `m=` with our port and the intersection: the offerer's payload type
/// numbers in the offerer's order, `a=rtpmap` for each, the offerer's `a=fmtp`; a
/// `telephone-event`/`CN` is kept only if supported and at the clock rate of a chosen voice
/// codec. The direction is the offer's reversed, and `a=ptime:20` is added. Any other stream
/// is answered with port 0 and its formats echoed. `t=` is copied from the offer (§6).
///
/// Returns `None` when no audio stream is acceptable (the caller answers 488).
pub fn answer(
    offer: &SessionDescription,
    addr: IpAddr,
    ports: &[u16],
    supported: &[&str],
    origin: (&str, u64, u64),
) -> Option<SessionDescription> {
    let mut sd = SessionDescription::new(origin, addr);
    let timing: Vec<OtherLine> = offer
        .other
        .iter()
        .filter(|l| matches!(l.kind, 't' | 'r' | 'z'))
        .cloned()
        .collect();
    if !timing.is_empty() {
        sd.other = timing;
    }
    let is_supported = |name: &str| supported.iter().any(|s| s.eq_ignore_ascii_case(name));
    let mut accepted_any = false;
    for (i, m) in offer.media.iter().enumerate() {
        let port = ports.get(i).copied().unwrap_or(0);
        let plain_rtp =
            m.proto.eq_ignore_ascii_case("RTP/AVP") || m.proto.eq_ignore_ascii_case("RTP/AVPF");
        let mut chosen: Vec<Codec> = Vec::new();
        if m.kind.eq_ignore_ascii_case("audio") && m.port != 0 && port != 0 && plain_rtp {
            let offered = m.codecs();
            let voice_rates: Vec<u32> = offered
                .iter()
                .filter(|c| !is_auxiliary(&c.name) && is_supported(&c.name))
                .map(|c| c.clock_rate)
                .collect();
            if !voice_rates.is_empty() {
                chosen = offered
                    .into_iter()
                    .filter(|c| is_supported(&c.name))
                    .filter(|c| !is_auxiliary(&c.name) || voice_rates.contains(&c.clock_rate))
                    .collect();
            }
        }
        if chosen.is_empty() {
            sd.media.push(Media {
                kind: m.kind.clone(),
                port: 0,
                port_count: None,
                proto: m.proto.clone(),
                formats: m.formats.clone(),
                connection: None,
                other: Vec::new(),
                attributes: Vec::new(),
            });
            continue;
        }
        accepted_any = true;
        let mut attributes = Vec::new();
        for c in &chosen {
            attributes.push(Attribute::new("rtpmap", &rtpmap_value(c)));
            if let Some(p) = &c.fmtp {
                attributes.push(Attribute::new("fmtp", &format!("{} {}", c.payload_type, p)));
            }
        }
        attributes.push(Attribute::new("ptime", "20"));
        attributes.push(Attribute::flag(offer.direction(i).reverse().as_str()));
        sd.media.push(Media {
            kind: m.kind.clone(),
            port,
            port_count: None,
            proto: m.proto.clone(),
            formats: chosen.iter().map(|c| c.payload_type.to_string()).collect(),
            connection: None,
            other: Vec::new(),
            attributes,
        });
    }
    accepted_any.then_some(sd)
}

/// An offer from the gateway's own endpoint: one `RTP/AVP` audio `m=` line with the given codecs
/// in the given order (known: `PCMU` 0, `PCMA` 8, `G722` 9, `G729` 18 with `annexb=no`,
/// `telephone-event` 101 with fmtp `0-16`; names are ASCII case-insensitive, unknown names are
/// skipped, and PCMU is used if nothing known is left, so the result is always valid SDP),
/// `a=ptime:20`, `a=sendrecv`.
pub fn offer(
    addr: IpAddr,
    port: u16,
    codecs: &[&str],
    origin: (&str, u64, u64),
) -> SessionDescription {
    let mut sd = SessionDescription::new(origin, addr);
    let mut known: Vec<&(&str, u8, u32, Option<&str>)> = Vec::new();
    for name in codecs {
        if let Some(k) = OFFERABLE.iter().find(|k| k.0.eq_ignore_ascii_case(name)) {
            if !known.iter().any(|x| x.1 == k.1) {
                known.push(k);
            }
        }
    }
    if known.iter().all(|k| is_auxiliary(k.0)) {
        known.insert(0, &OFFERABLE[0]);
    }
    let mut attributes = Vec::new();
    for (name, pt, rate, fmtp) in known.iter().copied() {
        attributes.push(Attribute::new("rtpmap", &format!("{pt} {name}/{rate}")));
        if let Some(p) = fmtp {
            attributes.push(Attribute::new("fmtp", &format!("{pt} {p}")));
        }
    }
    attributes.push(Attribute::new("ptime", "20"));
    attributes.push(Attribute::flag(Direction::SendRecv.as_str()));
    sd.media.push(Media {
        kind: "audio".to_string(),
        port,
        port_count: None,
        proto: "RTP/AVP".to_string(),
        formats: known.iter().map(|k| k.1.to_string()).collect(),
        connection: None::<Connection>,
        other: Vec::new(),
        attributes,
    });
    sd
}
