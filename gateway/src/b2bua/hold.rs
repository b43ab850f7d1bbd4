//! SDP of a hold relayed through the B2BUA (sans-IO).
//!
//! While one party holds, the gateway plays music on hold to the other one
//! ([`crate::media::moh`]), so the offer relayed to the held party says `sendonly` (the gateway
//! sends, the held phone receives), whatever hold form the holder used (`sendonly`, `inactive`,
//! `c=0.0.0.0`): a phone offered `inactive` would not play what it receives. The answer relayed
//! back to the holder stays a valid RFC 3264 answer to what the holder offered: `inactive`
//! for an `inactive` offer.

use crate::sdp::{Direction, SessionDescription};

/// The audio streams that carry media (port not 0).
fn live_audio(sdp: &SessionDescription) -> Vec<usize> {
    sdp.media()
        .iter()
        .enumerate()
        .filter(|(_, m)| m.kind.eq_ignore_ascii_case("audio") && m.port != 0)
        .map(|(i, _)| i)
        .collect()
}

/// Makes the (anchored) hold offer sent to the held party `sendonly` on its audio streams.
pub fn offer_to_held(sdp: &mut SessionDescription) {
    for i in live_audio(sdp) {
        sdp.set_direction(i, Direction::SendOnly);
    }
}

/// Makes the (anchored) answer relayed to the holder `inactive` on the audio streams the
/// holder offered `inactive`.
pub fn answer_to_holder(offer: &SessionDescription, answer: &mut SessionDescription) {
    for i in live_audio(answer) {
        if offer.direction(i) == Direction::Inactive {
            answer.set_direction(i, Direction::Inactive);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdp(extra: &str, c: &str) -> SessionDescription {
        SessionDescription::parse(&format!(
            "v=0\r\no=- 1 1 IN IP4 {c}\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0 8\r\n{extra}m=video 0 RTP/AVP 96\r\n"
        ))
        .unwrap()
    }

    #[test]
    fn every_hold_form_reaches_the_held_party_as_sendonly() {
        for (extra, c) in [
            ("a=inactive\r\n", "192.0.2.1"),
            ("a=sendonly\r\n", "192.0.2.1"),
            ("", "0.0.0.0"),
        ] {
            let mut s = sdp(extra, c);
            offer_to_held(&mut s);
            assert_eq!(s.direction(0), Direction::SendOnly, "{extra:?} {c}");
            let text = s.to_string();
            assert_eq!(text.matches("a=sendonly").count(), 1, "{text}");
            assert!(!text.contains("inactive"), "{text}");
        }
    }

    #[test]
    fn an_inactive_offer_gets_an_inactive_answer() {
        let offer = sdp("a=inactive\r\n", "192.0.2.1");
        let mut answer = sdp("a=recvonly\r\n", "192.0.2.9");
        answer_to_holder(&offer, &mut answer);
        assert_eq!(answer.direction(0), Direction::Inactive);
        // A sendonly offer keeps the held party's recvonly.
        let offer = sdp("a=sendonly\r\n", "192.0.2.1");
        let mut answer = sdp("a=recvonly\r\n", "192.0.2.9");
        answer_to_holder(&offer, &mut answer);
        assert_eq!(answer.direction(0), Direction::RecvOnly);
    }
}
