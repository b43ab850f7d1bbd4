//! SRTP with SDES keys (RFC 4568 `a=crypto`) through the B2BUA: **pass-through**. The relay
//! forwards SRTP packets unchanged (their RTP header is clear, so latching, loss/jitter
//! figures and the media timeout work as for RTP); the keys each phone offers reach the other
//! phone in the anchored SDP. RFC 4568 §8.3: SDES keys may only travel over a secured
//! signalling path, so `a=crypto` lines survive only when **both** legs are TLS; otherwise
//! they are removed, the SDP then offers plain RTP (an `RTP/SAVP` stream stays SAVP without
//! keys, which its receiver refuses: the call fails rather than leak or downgrade).
//!
//! Chosen over terminating SRTP per leg (own keys, decrypt and re-encrypt in the relay)
//! because it keeps the relay's per-packet path free of cryptography, and both phones of a TLS
//! call already trust the gateway with the keys. Its cost: call recording records ciphertext.
//!
//! Audio the gateway injects itself (music on hold) is SRTP too: when an answer crosses, each
//! leg's receiving key goes to the relay ([`MediaControl::srtp`], [`answer_crossed`]): the key
//! in the answer sent to one phone, and for the other phone the line of the offer it was sent
//! that the answer chose by its tag. `media::srtp` protects the injected packets with it, under
//! their own SSRC. Not covered: a late offer (the caller's answer in its ACK) and the
//! gateway's own calls (voicemail, supervisor), whose injected audio stays plain RTP.

use super::{CallId, MediaControl, Side};
use crate::media::srtp::SdesKey;
use crate::sdp::SessionDescription;
use crate::transport::Peer;

/// Removes every `a=crypto` of `sdp` unless `keep`.
pub(super) fn secure_keys(sdp: &mut SessionDescription, keep: bool) {
    if keep {
        return;
    }
    for m in sdp.media_mut() {
        m.remove_attributes("crypto");
    }
}

/// Whether SDES keys may pass between these two legs: both are TLS.
pub(super) fn keys_may_pass(a: &Peer, b: &Peer) -> bool {
    a.transport.is_secure() && b.transport.is_secure()
}

/// The usable SDES keys of the first audio stream of `sdp` (unparseable or unsupported lines
/// skipped: the phone may have chosen a suite we cannot protect with).
fn keys(sdp: &SessionDescription) -> impl Iterator<Item = SdesKey> + '_ {
    sdp.media()
        .iter()
        .filter(|m| m.kind.eq_ignore_ascii_case("audio") && m.port != 0)
        .take(1)
        .flat_map(|m| m.attributes("crypto"))
        .filter_map(|v| SdesKey::parse(v).ok())
}

/// An answer crossed the B2BUA to side `to` (`answer` as sent to it): tells the relay the key
/// each phone now receives with. `to`'s phone uses the key of the answer; the other phone the
/// line with the answer's tag in the offer it was sent (`offer_to_other`). Without keys (not
/// SRTP, or keys removed), injected audio stays plain.
pub(super) fn answer_crossed(
    media: &mut dyn MediaControl,
    call: CallId,
    to: Side,
    answer: &SessionDescription,
    offer_to_other: Option<&SessionDescription>,
) {
    let chosen = keys(answer).next();
    let other = chosen.as_ref().and_then(|k| {
        offer_to_other.and_then(|o| keys(o).find(|o| o.tag == k.tag && o.suite == k.suite))
    });
    media.srtp(call, to, chosen);
    media.srtp(call, to.other(), other);
}
