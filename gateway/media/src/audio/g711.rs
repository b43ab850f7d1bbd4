//! ITU-T G.711 μ-law (PCMU) and A-law (PCMA) codecs.
//!
//! Hand-written rather than taken from a crate: the G.711 crates on crates.io are small,
//! single-author and rarely updated, while the algorithm is ~40 lines of integer code that is
//! fully verified here against the standard's decision/reconstruction values (see tests).
//! This is the classic segment (chord) algorithm of the public-domain Sun Microsystems
//! `g711.c` reference (with the ITU-T G.191 STL handling of negative μ-law input), whose
//! code words and reconstruction values match ITU-T G.711 tables 1 and 2:
//!
//! * μ-law works on the 14-bit magnitude (`pcm >> 2`), adds the bias 33 (0x84 in 16-bit units),
//!   finds the segment (0..=7) of the biased value and keeps 4 mantissa bits; the code word is
//!   inverted (`0xFF` = +0).
//! * A-law works on the 13-bit magnitude (`pcm >> 3`), segment 0 and 1 share the same step,
//!   and even bits are inverted (`^ 0x55`); the sign bit is 1 for positive values (`0xD5` = +8).
//!
//! Decoding returns the midpoint of the quantisation interval, scaled to 16-bit linear PCM.

/// μ-law bias in 16-bit units (33 in 14-bit units).
const ULAW_BIAS: i32 = 0x84;
/// Largest μ-law 14-bit magnitude before biasing.
const ULAW_CLIP: i32 = 8159;
/// Upper bound of each μ-law segment (biased 14-bit magnitude).
const ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
/// Upper bound of each A-law segment (13-bit magnitude).
const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

fn segment(value: i32, table: &[i32; 8]) -> usize {
    table.iter().position(|&end| value <= end).unwrap_or(8)
}

/// Encodes one 16-bit linear sample to a μ-law code word.
pub fn linear_to_ulaw(pcm: i16) -> u8 {
    // Negative input uses the one's complement (`!pcm`, as in the ITU-T G.191 STL reference),
    // so -1..=-4 map to "-0" (0x7F) symmetrically with 0..=3 -> 0xFF.
    let (mut v, mask) = if pcm < 0 {
        (i32::from(!pcm) >> 2, 0x7Fu8)
    } else {
        (i32::from(pcm) >> 2, 0xFFu8)
    };
    v = v.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    let seg = segment(v, &ULAW_SEG_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    // seg < 8 and the masked mantissa < 16, so the value fits in a byte.
    let code = ((seg as i32) << 4) | ((v >> (seg + 1)) & 0xF);
    (code as u8) ^ mask
}

/// Decodes one μ-law code word to a 16-bit linear sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = i32::from(!code);
    let mut t = ((u & 0x0F) << 3) + ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    let v = if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    };
    // |v| <= 32124.
    v as i16
}

/// Encodes one 16-bit linear sample to an A-law code word.
pub fn linear_to_alaw(pcm: i16) -> u8 {
    let mut v = i32::from(pcm) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &ALAW_SEG_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = if seg < 2 {
        (v >> 1) & 0xF
    } else {
        (v >> seg) & 0xF
    };
    let code = ((seg as i32) << 4) | mantissa;
    (code as u8) ^ mask
}

/// Decodes one A-law code word to a 16-bit linear sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = i32::from(code ^ 0x55);
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    // |t| <= 32256.
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// A G.711 variant, as used in RTP (RFC 3551 static payload types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// μ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// RTP payload type of this codec.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => super::PT_PCMU,
            Codec::Pcma => super::PT_PCMA,
        }
    }

    /// Codec for a static RTP payload type (0 or 8), `None` for anything else.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            super::PT_PCMU => Some(Codec::Pcmu),
            super::PT_PCMA => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// Encodes one sample.
    pub fn encode_sample(self, pcm: i16) -> u8 {
        match self {
            Codec::Pcmu => linear_to_ulaw(pcm),
            Codec::Pcma => linear_to_alaw(pcm),
        }
    }

    /// Decodes one code word.
    pub fn decode_sample(self, code: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_to_linear(code),
            Codec::Pcma => alaw_to_linear(code),
        }
    }

    /// Encodes a block of samples.
    pub fn encode(self, pcm: &[i16]) -> Vec<u8> {
        pcm.iter().map(|&s| self.encode_sample(s)).collect()
    }

    /// Decodes a block of code words.
    pub fn decode(self, codes: &[u8]) -> Vec<i16> {
        codes.iter().map(|&c| self.decode_sample(c)).collect()
    }

    /// Encodes then decodes: what a far end hears for `pcm`.
    pub fn round_trip(self, pcm: &[i16]) -> Vec<i16> {
        pcm.iter()
            .map(|&s| self.decode_sample(self.encode_sample(s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(ulaw_to_linear(0xF0), 120);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(-5), 0x7E);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(32124), 0x80);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xD4), 24);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    /// Reconstruction levels straight from the G.711 definition (independent of the code above):
    /// μ-law segment s, step q: magnitude = ((2q + 33) << s) - 33, in 14-bit units, times 4.
    /// A-law segment s, step q: s == 0: 2q + 1, else (2q + 33) << (s - 1), in 13-bit units, times 8.
    #[test]
    fn tables_match_definition() {
        for code in 0u16..=255 {
            let code = code as u8;
            let inv = !code;
            let (s, q) = (i32::from((inv >> 4) & 7), i32::from(inv & 0xF));
            let mag = (((2 * q + 33) << s) - 33) * 4;
            let expect = if inv & 0x80 != 0 { -mag } else { mag };
            assert_eq!(i32::from(ulaw_to_linear(code)), expect, "ulaw {code:#04x}");

            let a = code ^ 0x55;
            let (s, q) = (i32::from((a >> 4) & 7), i32::from(a & 0xF));
            let mag = if s == 0 {
                2 * q + 1
            } else {
                (2 * q + 33) << (s - 1)
            } * 8;
            let expect = if a & 0x80 != 0 { mag } else { -mag };
            assert_eq!(i32::from(alaw_to_linear(code)), expect, "alaw {code:#04x}");
        }
    }

    #[test]
    fn code_round_trip() {
        for code in 0u16..=255 {
            let code = code as u8;
            // 0x7F is μ-law "-0", which re-encodes as +0 (0xFF).
            if code != 0x7F {
                assert_eq!(
                    linear_to_ulaw(ulaw_to_linear(code)),
                    code,
                    "ulaw {code:#04x}"
                );
            }
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "alaw {code:#04x}"
            );
        }
    }

    #[test]
    fn encoding_is_monotonic_and_error_bounded() {
        let mut prev_u = ulaw_to_linear(linear_to_ulaw(i16::MIN));
        let mut prev_a = alaw_to_linear(linear_to_alaw(i16::MIN));
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(x));
            let a = alaw_to_linear(linear_to_alaw(x));
            assert!(u >= prev_u && a >= prev_a, "not monotonic at {x}");
            prev_u = u;
            prev_a = a;
            let xi = i32::from(x);
            // Half a quantisation step: about |x|/32 (4 mantissa bits) plus the segment-0 step.
            let eu = (i32::from(u) - xi.clamp(-32124, 32124)).abs();
            let ea = (i32::from(a) - xi.clamp(-32256, 32256)).abs();
            assert!(eu <= xi.abs() / 32 + 8, "ulaw error {eu} at {x}");
            assert!(ea <= xi.abs() / 32 + 16, "alaw error {ea} at {x}");
            // Idempotent after one pass.
            assert_eq!(ulaw_to_linear(linear_to_ulaw(u)), u);
            assert_eq!(alaw_to_linear(linear_to_alaw(a)), a);
        }
    }

    #[test]
    fn codec_payload_types() {
        assert_eq!(Codec::from_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(101), None);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        let pcm = [0i16, 1000, -1000, 32000];
        assert_eq!(
            Codec::Pcmu.decode(&Codec::Pcmu.encode(&pcm)),
            Codec::Pcmu.round_trip(&pcm)
        );
    }
}
