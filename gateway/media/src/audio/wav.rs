//! WAV reading (8 kHz mono: 16-bit PCM, 8-bit μ-law, 8-bit A-law) and writing.
//!
//! Reading uses a small RIFF parser of our own because `hound` (used for writing 16-bit PCM)
//! rejects WAVE format tags 6 (A-law) and 7 (μ-law), which telephony prompts commonly use.
//! No resampling is done: other rates or channel counts are rejected with a clear error.

use std::io::Cursor;
use std::path::Path;

use super::error::AudioError;
use super::g711::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};
use super::SAMPLE_RATE;

const FORMAT_PCM: u16 = 1;
const FORMAT_ALAW: u16 = 6;
const FORMAT_ULAW: u16 = 7;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Encoding of a WAV file written by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavEncoding {
    /// 16-bit signed little-endian PCM (format tag 1).
    Pcm16,
    /// 8-bit μ-law (format tag 7).
    Ulaw,
    /// 8-bit A-law (format tag 6).
    Alaw,
}

fn malformed(file: &str, reason: impl Into<String>) -> AudioError {
    AudioError::Malformed {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Decodes an in-memory WAV file to 8 kHz mono 16-bit samples. `name` is used in errors.
pub fn decode_wav(bytes: &[u8], name: &str) -> Result<Vec<i16>, AudioError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(malformed(name, "missing RIFF/WAVE header"));
    }
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut data: Option<&[u8]> = None;
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = le_u32(bytes, at + 4).unwrap_or(0) as usize;
        let body_start = at + 8;
        // Tolerate a truncated last chunk (e.g. a data size written as 0xFFFFFFFF by streaming
        // writers): use what is there.
        let body_end = body_start.saturating_add(size).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                let (Some(mut tag), Some(channels), Some(rate), Some(bits)) = (
                    le_u16(body, 0),
                    le_u16(body, 2),
                    le_u32(body, 4),
                    le_u16(body, 14),
                ) else {
                    return Err(malformed(name, "fmt chunk too short"));
                };
                if tag == FORMAT_EXTENSIBLE {
                    // WAVEFORMATEXTENSIBLE: the real tag is the first 2 bytes of the sub-format GUID.
                    tag = le_u16(body, 24)
                        .ok_or_else(|| malformed(name, "extensible fmt chunk too short"))?;
                }
                fmt = Some((tag, channels, rate, bits));
            }
            b"data" => {
                data = Some(body);
                break;
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        at = body_start.saturating_add(size).saturating_add(size & 1);
    }
    let (tag, channels, rate, bits) = fmt.ok_or_else(|| malformed(name, "no fmt chunk"))?;
    let data = data.ok_or_else(|| malformed(name, "no data chunk"))?;
    let decoder: fn(&[u8]) -> Vec<i16> = match (tag, bits) {
        (FORMAT_PCM, 16) => |d| {
            d.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect()
        },
        (FORMAT_ULAW, 8) => |d| d.iter().map(|&c| ulaw_to_linear(c)).collect(),
        (FORMAT_ALAW, 8) => |d| d.iter().map(|&c| alaw_to_linear(c)).collect(),
        _ => {
            return Err(AudioError::UnsupportedEncoding {
                file: name.to_owned(),
                format_tag: tag,
                bits,
            })
        }
    };
    if channels != 1 {
        return Err(AudioError::UnsupportedChannels {
            file: name.to_owned(),
            channels,
        });
    }
    if rate != SAMPLE_RATE {
        return Err(AudioError::UnsupportedRate {
            file: name.to_owned(),
            rate,
        });
    }
    Ok(decoder(data))
}

/// Reads a WAV file from disk (see [`decode_wav`]).
pub fn read_wav(path: &Path) -> Result<Vec<i16>, AudioError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        file: name.clone(),
        source,
    })?;
    decode_wav(&bytes, &name)
}

/// Encodes 8 kHz mono samples as a WAV file in memory.
pub fn encode_wav(samples: &[i16], encoding: WavEncoding) -> Result<Vec<u8>, AudioError> {
    const NAME: &str = "<wav buffer>";
    let bytes_per_sample = if encoding == WavEncoding::Pcm16 { 2 } else { 1 };
    let data_len = samples
        .len()
        .checked_mul(bytes_per_sample)
        .filter(|&n| n <= (u32::MAX as usize) - 64)
        .ok_or(AudioError::TooLong {
            file: NAME.to_owned(),
            samples: samples.len(),
        })?;
    match encoding {
        WavEncoding::Pcm16 => {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: SAMPLE_RATE,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut cursor = Cursor::new(Vec::with_capacity(44 + data_len));
            let hound_err = |e: hound::Error| malformed(NAME, e.to_string());
            let mut writer = hound::WavWriter::new(&mut cursor, spec).map_err(hound_err)?;
            for &s in samples {
                writer.write_sample(s).map_err(hound_err)?;
            }
            writer.finalize().map_err(hound_err)?;
            Ok(cursor.into_inner())
        }
        WavEncoding::Ulaw | WavEncoding::Alaw => {
            let (tag, enc): (u16, fn(i16) -> u8) = if encoding == WavEncoding::Ulaw {
                (FORMAT_ULAW, linear_to_ulaw)
            } else {
                (FORMAT_ALAW, linear_to_alaw)
            };
            // Non-PCM WAVs carry an 18-byte fmt chunk (cbSize = 0) and a fact chunk.
            let len = data_len as u32;
            let mut out = Vec::with_capacity(58 + data_len + 1);
            out.extend_from_slice(b"RIFF");
            out.extend_from_slice(&(4 + 26 + 12 + 8 + len + (len & 1)).to_le_bytes());
            out.extend_from_slice(b"WAVEfmt ");
            out.extend_from_slice(&18u32.to_le_bytes());
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&1u16.to_le_bytes()); // channels
            out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
            out.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // byte rate
            out.extend_from_slice(&1u16.to_le_bytes()); // block align
            out.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
            out.extend_from_slice(&0u16.to_le_bytes()); // cbSize
            out.extend_from_slice(b"fact");
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(b"data");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend(samples.iter().map(|&s| enc(s)));
            if len & 1 == 1 {
                out.push(0);
            }
            Ok(out)
        }
    }
}

/// Writes 8 kHz mono samples to a WAV file on disk.
pub fn write_wav(path: &Path, samples: &[i16], encoding: WavEncoding) -> Result<(), AudioError> {
    let name = path.display().to_string();
    let bytes = encode_wav(samples, encoding).map_err(|e| match e {
        AudioError::TooLong { samples, .. } => AudioError::TooLong {
            file: name.clone(),
            samples,
        },
        other => other,
    })?;
    std::fs::write(path, bytes).map_err(|source| AudioError::Io { file: name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::g711::Codec;

    fn ramp() -> Vec<i16> {
        (0..1001)
            .map(|i| ((i * 97) % 65536 - 32768) as i16)
            .collect()
    }

    #[test]
    fn pcm16_round_trip_and_hound_compat() {
        let pcm = ramp();
        let bytes = encode_wav(&pcm, WavEncoding::Pcm16).unwrap();
        assert_eq!(decode_wav(&bytes, "t.wav").unwrap(), pcm);
        // hound reads what we wrote.
        let r = hound::WavReader::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(r.spec().sample_rate, 8000);
        let back: Vec<i16> = r.into_samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(back, pcm);
    }

    #[test]
    fn ulaw_and_alaw_round_trip() {
        let pcm = ramp(); // odd length exercises chunk padding
        for (enc, codec) in [
            (WavEncoding::Ulaw, Codec::Pcmu),
            (WavEncoding::Alaw, Codec::Pcma),
        ] {
            let bytes = encode_wav(&pcm, enc).unwrap();
            assert_eq!(bytes.len() % 2, 0);
            assert_eq!(le_u32(&bytes, 4).unwrap() as usize, bytes.len() - 8);
            assert_eq!(decode_wav(&bytes, "t.wav").unwrap(), codec.round_trip(&pcm));
        }
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("cf-audio-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.wav");
        write_wav(&path, &ramp(), WavEncoding::Pcm16).unwrap();
        assert_eq!(read_wav(&path).unwrap(), ramp());
        let err = read_wav(&dir.join("missing.wav")).unwrap_err();
        assert!(matches!(err, AudioError::Io { .. }));
        assert!(err.to_string().contains("missing.wav"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn hound_wav(rate: u32, channels: u16, bits: u16) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut c = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut c, spec).unwrap();
        for _ in 0..channels * 10 {
            if bits == 8 {
                w.write_sample(1i8).unwrap();
            } else {
                w.write_sample(1i16).unwrap();
            }
        }
        w.finalize().unwrap();
        c.into_inner()
    }

    #[test]
    fn reads_extensible_and_skips_unknown_chunks() {
        let pcm = [1i16, -2, 300];
        let data: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut fmt = vec![];
        fmt.extend_from_slice(&FORMAT_EXTENSIBLE.to_le_bytes());
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&8000u32.to_le_bytes());
        fmt.extend_from_slice(&16000u32.to_le_bytes());
        fmt.extend_from_slice(&2u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        fmt.extend_from_slice(&16u16.to_le_bytes()); // valid bits
        fmt.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        fmt.extend_from_slice(&FORMAT_PCM.to_le_bytes()); // sub-format GUID starts with the tag
        fmt.extend_from_slice(&[0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71]);
        let mut w = b"RIFF\0\0\0\0WAVE".to_vec();
        w.extend_from_slice(b"LIST\x03\0\0\0abc\0"); // odd-sized chunk + pad byte
        w.extend_from_slice(b"fmt ");
        w.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        w.extend_from_slice(&fmt);
        w.extend_from_slice(b"data\xFF\xFF\xFF\xFF"); // streaming writer: unknown size
        w.extend_from_slice(&data);
        assert_eq!(decode_wav(&w, "ext.wav").unwrap(), pcm);
    }

    #[test]
    fn rejects_wrong_rate_channels_encoding() {
        let e = decode_wav(&hound_wav(22050, 1, 16), "espeak.wav").unwrap_err();
        assert!(matches!(e, AudioError::UnsupportedRate { rate: 22050, .. }));
        assert!(e.to_string().starts_with("espeak.wav: sample rate 22050"));
        let e = decode_wav(&hound_wav(8000, 2, 16), "stereo.wav").unwrap_err();
        assert!(matches!(
            e,
            AudioError::UnsupportedChannels { channels: 2, .. }
        ));
        let e = decode_wav(&hound_wav(8000, 1, 8), "u8.wav").unwrap_err();
        assert!(matches!(
            e,
            AudioError::UnsupportedEncoding {
                format_tag: 1,
                bits: 8,
                ..
            }
        ));
        for junk in [
            &b""[..],
            b"RIFF",
            b"RIFF\0\0\0\0WAVE",
            b"RIFF\0\0\0\0WAVEfmt \x02\0\0\0\x01\0",
        ] {
            let e = decode_wav(junk, "junk.wav").unwrap_err();
            assert!(matches!(e, AudioError::Malformed { .. }), "{e}");
        }
    }
}
