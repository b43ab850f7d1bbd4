//! Media engine for prompts, music on hold and call recording.
//!
//! * [`g711`]: G.711 μ-law / A-law codecs.
//! * [`wav`]: reading 8 kHz mono WAV prompts (16-bit PCM, μ-law, A-law) and writing recordings.
//! * [`player`]: sans-IO [`RtpPlayer`] producing paced 20 ms RTP packets from PCM.
//! * [`recorder`]: sans-IO [`RtpRecorder`] rebuilding PCM from received RTP.
//! * [`prompts`]: generated tones / music on hold, prompt directories and `say_number`.
//! * [`pump`]: async glue ([`RtpSink`], [`play`]) pacing a player on tokio timers.
//!
//! Everything except [`pump`] is synchronous and free of clock reads so it can be tested with
//! virtual time.

pub mod error;
pub mod g711;
pub mod player;
pub mod prompts;
pub mod pump;
pub mod recorder;
pub mod wav;

pub use error::AudioError;
pub use g711::Codec;
pub use player::{PlayerConfig, RtpPlayer};
pub use prompts::{load_prompt_dir, say_number, PromptSet};
pub use pump::{play, PlayEnd, RtpSink};
pub use recorder::{PushResult, RecorderConfig, RtpRecorder};
pub use wav::WavEncoding;

/// Sample rate of everything in this module (G.711 narrowband), in Hz.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples carried by one 20 ms RTP packet at 8 kHz.
pub const SAMPLES_PER_PACKET: usize = 160;
/// Duration of one RTP packet.
pub const PACKET_DURATION: std::time::Duration = std::time::Duration::from_millis(20);
/// RTP payload type of PCMU (RFC 3551).
pub const PT_PCMU: u8 = 0;
/// RTP payload type of PCMA (RFC 3551).
pub const PT_PCMA: u8 = 8;
