//! Media: the RTP/RTCP relay between call legs (B2BUA media path) and the [`audio`] engine
//! (prompts, music on hold, recording).
//!
//! * [`ports`] (sans-IO): even/odd RTP/RTCP port pairs from a configured range.
//! * [`stats`] (sans-IO): RFC 3550 A.1/A.3/A.8 sequence, loss and jitter.
//! * [`latch`] (sans-IO): symmetric RTP latching for NAT'd phones, with the re-latch policy
//!   that protects a running call from hijacking (see the module doc).
//! * [`dtmf`] (sans-IO): RFC 4733 telephone-event detection and SIP INFO DTMF bodies.

//! * [`mixer`]: supervisor listen / whisper / barge (sans-IO [`mixer::Mixer`]: G.711 decode,
//!   saturating sum per listener without its own audio, 20 ms frames, bounded jitter buffers;
//!   [`mixer::Spy`] runs it over relay legs).
//! * [`moh`]: music on hold for the held party (sans-IO hold plan + players on relay legs).
//! * [`srtp`] (sans-IO): RFC 3711 protection of the audio the gateway injects into a leg whose
//!   phone negotiated SDES keys (music on hold to an SRTP phone).
//! * [`relay`] (tokio): [`MediaRelay`] hands out [`Leg`]s (one UDP socket pair and one task
//!   each); [`bridge`] connects two legs so that what one hears the other sends; a leg also
//!   takes injected packets ([`Leg::send_rtp`], prompts and music on hold) and feeds recorders
//!   ([`Leg::subscribe`]).
//!
//! Nothing received from the network can panic: RTP headers are parsed with `rtp-rs`'s
//! checked [`rtp_rs::RtpReader`]; anything that is not RTP version 2 (or RTCP on the RTCP port)
//! is dropped and counted ([`LegStats::invalid_packets`]).

pub mod audio;
pub mod dtmf;
pub mod latch;
pub mod mixer;
pub mod moh;
pub mod ports;
pub mod relay;
pub mod srtp;
pub mod stats;

#[cfg(test)]
mod tests;

use std::io;

pub use latch::{Latch, LatchVerdict, DEFAULT_RELATCH_SILENCE};
pub use ports::PortAllocator;
pub use relay::{
    bridge, relay_threads_per_core, unbridge, Leg, LegStats, MediaRelay, RelayConfig,
    RelayScheduling, RelayThreadsReport, MAX_PACKET_SIZE, MAX_RELAY_THREADS, SUBSCRIBER_CAPACITY,
};
pub use stats::{RtpStats, SeqVerdict, DEFAULT_CLOCK_RATE};

/// Errors of the media relay.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The configured port range holds no even/odd pair (or starts at port 0).
    #[error("invalid RTP port range {min}-{max}: it must hold an even/odd port pair")]
    InvalidPortRange {
        /// Configured minimum.
        min: u16,
        /// Configured maximum.
        max: u16,
    },
    /// Every pair in the range is held (by us, or by another process).
    #[error("no free RTP/RTCP port pair in {min}-{max}")]
    PortsExhausted {
        /// Configured minimum.
        min: u16,
        /// Configured maximum.
        max: u16,
    },
    /// The leg was closed.
    #[error("media leg is closed")]
    Closed,
    /// The leg has no destination yet (no SDP address, nothing latched).
    #[error("media leg has no remote address")]
    NoRemote,
    /// A leg was opened outside a tokio runtime.
    #[error("media legs need a tokio runtime")]
    NoRuntime,
    /// A leg cannot be bridged with itself.
    #[error("cannot bridge a media leg with itself")]
    SelfBridge,
    /// An injected packet could not be SRTP-protected (not RTP, the peer's SSRC, the key's
    /// lifetime used up).
    #[error(transparent)]
    Srtp(#[from] srtp::SrtpError),
    /// A socket operation failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A relay leg is a sink for the media engine's player (prompts, music on hold): packets are
/// sent to the leg's remote without waiting; a full socket buffer drops the packet.
impl crate::audio::RtpSink for Leg {
    fn send_rtp(&self, packet: &[u8]) {
        let _ = self.try_send_rtp(packet);
    }
}
