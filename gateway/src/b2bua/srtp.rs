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
//! call already trust the gateway with the keys. Its costs: music on hold and announcements
//! injected by the gateway are plain RTP, which an SRTP phone drops (silence while held), and
//! call recording records ciphertext.

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
