//! Error type of the audio module.

use thiserror::Error;

/// Errors of the audio module. File-related variants carry the file (or buffer) name.
#[derive(Debug, Error)]
pub enum AudioError {
    /// Reading or writing a file failed.
    #[error("{file}: I/O error: {source}")]
    Io {
        /// File concerned.
        file: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data is not a well-formed WAV file.
    #[error("{file}: not a valid WAV file: {reason}")]
    Malformed {
        /// File concerned.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The WAV encoding is not one we accept.
    #[error(
        "{file}: unsupported WAV encoding (format tag {format_tag}, {bits} bits per sample); \
         need 16-bit PCM (1), 8-bit A-law (6) or 8-bit μ-law (7)"
    )]
    UnsupportedEncoding {
        /// File concerned.
        file: String,
        /// WAVE format tag found.
        format_tag: u16,
        /// Bits per sample found.
        bits: u16,
    },
    /// The WAV sample rate is not 8000 Hz (no resampling is done).
    #[error(
        "{file}: sample rate {rate} Hz not supported, need 8000 Hz \
         (convert e.g. with `sox in.wav -r 8000 -c 1 -b 16 out.wav`)"
    )]
    UnsupportedRate {
        /// File concerned.
        file: String,
        /// Rate found.
        rate: u32,
    },
    /// The WAV file is not mono.
    #[error("{file}: {channels} channels not supported, need mono")]
    UnsupportedChannels {
        /// File concerned.
        file: String,
        /// Channel count found.
        channels: u16,
    },
    /// A recording is too long to be stored in a WAV file (4 GiB limit).
    #[error("{file}: recording too long for a WAV file ({samples} samples)")]
    TooLong {
        /// File concerned.
        file: String,
        /// Samples that were to be written.
        samples: usize,
    },
    /// A named prompt is not in the [`PromptSet`](super::PromptSet).
    #[error("prompt {0:?} not found")]
    MissingPrompt(String),
}
