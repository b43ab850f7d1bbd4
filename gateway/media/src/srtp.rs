//! SRTP protection of the audio the gateway itself sends (music on hold, prompts) to a leg
//! whose phone negotiated SDES keys (RFC 4568 `a=crypto`): RFC 3711 with the two suites SDES
//! phones offer, `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32`.
//!
//! The relay passes the phones' own SRTP through unchanged (`gateway/src/b2bua/srtp.rs`); only
//! packets the gateway makes up are protected here, with the key the leg's phone expects to
//! receive with (the one in the SDP the gateway sent it). That key is also the other phone's
//! sending key: the keystream of a packet depends on its SSRC (RFC 3711 §4.1.1), so the
//! gateway's streams never reuse the peer's keystream as long as their SSRCs differ. A player
//! picks a random SSRC; [`SrtpSender::protect`] refuses one it was told is the peer's
//! ([`SrtpSender::avoid_ssrc`]).
//!
//! * [`SdesKey::parse`]: the value of an `a=crypto` attribute (`1 AES_CM_128_HMAC_SHA1_80
//!   inline:<base64 key‖salt>[|lifetime][|MKI:len]`), bounded and checked.
//! * [`SrtpSender`] (sans-IO): session keys derived with the AES-CM PRF (§4.3.1, key derivation
//!   rate 0), payload encrypted with AES-CM (§4.1.1), the HMAC-SHA1 tag (§4.2.1) over the packet
//!   and the rollover counter; a rollover counter per SSRC (§3.3.1: +1 when the sequence number
//!   wraps), at most [`MAX_STREAMS`] streams, the key's lifetime enforced.
//!
//! Crypto from RustCrypto (`aes`, `ctr`, `hmac`, `sha1`); RFC 3711 Appendix B vectors in the
//! unit tests.

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine as _;
use hmac::{Hmac, Mac};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;
type HmacSha1 = Hmac<sha1::Sha1>;

/// Length of an AES-128 master key.
pub const MASTER_KEY_LEN: usize = 16;
/// Length of a master salt.
pub const MASTER_SALT_LEN: usize = 14;
/// Streams (SSRCs) one sender keeps a rollover counter for; the least recently used is
/// forgotten beyond.
pub const MAX_STREAMS: usize = 8;
/// Longest `a=crypto` value parsed.
const MAX_ATTR_LEN: usize = 512;
/// RFC 3711 §9.2: at most 2^48 SRTP packets under one master key.
const MAX_LIFETIME: u64 = 1 << 48;

/// SRTP errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The `a=crypto` value could not be used.
    #[error("a=crypto: {0}")]
    BadKey(&'static str),
    /// The crypto suite is not one we protect with.
    #[error("a=crypto: unsupported crypto suite {0}")]
    UnsupportedSuite(String),
    /// Not an RTP packet (too short, version, CSRC count or extension beyond the packet).
    #[error("not an RTP packet")]
    NotRtp,
    /// The packet carries the SSRC of the peer's stream under the same key.
    #[error("SSRC {0:#010x} is the peer's: keystream reuse refused")]
    PeerSsrc(u32),
    /// The master key's lifetime is used up.
    #[error("SRTP master key lifetime exhausted")]
    KeyExpired,
}

/// An SRTP crypto suite of RFC 4568 §6.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// AES-CM 128, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// AES-CM 128, HMAC-SHA1 with a 32-bit tag.
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suite named `name` (RFC 4568 §6.2), if supported.
    pub fn from_name(name: &str) -> Option<Suite> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Some(Suite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(Suite::AesCm128HmacSha1_32),
            _ => None,
        }
    }

    /// The suite's name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// Bytes of the authentication tag.
    pub fn tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// One SDES key: an `a=crypto` attribute's tag, suite and first key parameter.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey {
    /// The attribute's tag (the answer names the offer's line it accepted by it).
    pub tag: u32,
    /// The crypto suite.
    pub suite: Suite,
    master_key: [u8; MASTER_KEY_LEN],
    master_salt: [u8; MASTER_SALT_LEN],
    /// Packets the key may protect (`|2^20`); 2^48 when absent.
    pub lifetime: u64,
    /// The MKI and its length in bytes (`|1:4`), carried in every packet.
    pub mki: Option<(u64, u8)>,
}

impl std::fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself (logs).
        f.debug_struct("SdesKey")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("lifetime", &self.lifetime)
            .field("mki", &self.mki)
            .finish_non_exhaustive()
    }
}

impl SdesKey {
    /// A key from its parts.
    pub fn new(
        tag: u32,
        suite: Suite,
        master_key: [u8; MASTER_KEY_LEN],
        master_salt: [u8; MASTER_SALT_LEN],
    ) -> SdesKey {
        SdesKey {
            tag,
            suite,
            master_key,
            master_salt,
            lifetime: MAX_LIFETIME,
            mki: None,
        }
    }

    /// Parses the value of an `a=crypto` attribute (RFC 4568 §9.1): `tag suite key-params
    /// [session-params]`. Only the first key parameter is used (the others are for a key
    /// change by MKI, which we never start); session parameters other than `UNENCRYPTED_*`
    /// (refused: we would still encrypt) are ignored except a non-zero `KDR=` (refused).
    pub fn parse(value: &str) -> Result<SdesKey, SrtpError> {
        if value.len() > MAX_ATTR_LEN {
            return Err(SrtpError::BadKey("too long"));
        }
        let mut words = value.split_ascii_whitespace();
        let tag = words
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|t| *t < 1_000_000_000)
            .ok_or(SrtpError::BadKey("tag is not a 1-9 digit number"))?;
        let suite_name = words.next().ok_or(SrtpError::BadKey("no crypto suite"))?;
        let suite = Suite::from_name(suite_name)
            .ok_or_else(|| SrtpError::UnsupportedSuite(suite_name.chars().take(40).collect()))?;
        let params = words.next().ok_or(SrtpError::BadKey("no key parameters"))?;
        for session in words {
            if session.starts_with("UNENCRYPTED_SRTP") || session.starts_with("UNAUTHENTICATED") {
                return Err(SrtpError::BadKey("unencrypted/unauthenticated SRTP"));
            }
            if let Some(kdr) = session.strip_prefix("KDR=") {
                if kdr != "0" {
                    return Err(SrtpError::BadKey("key derivation rate other than 0"));
                }
            }
        }
        let first = params.split(';').next().unwrap_or_default();
        let inline = first
            .strip_prefix("inline:")
            .ok_or(SrtpError::BadKey("key method is not inline"))?;
        let mut parts = inline.split('|');
        let b64 = parts.next().unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SrtpError::BadKey("key is not base64"))?;
        if raw.len() != MASTER_KEY_LEN + MASTER_SALT_LEN {
            return Err(SrtpError::BadKey("key and salt are not 30 bytes"));
        }
        let mut key = SdesKey::new(tag, suite, [0; MASTER_KEY_LEN], [0; MASTER_SALT_LEN]);
        key.master_key.copy_from_slice(&raw[..MASTER_KEY_LEN]);
        key.master_salt.copy_from_slice(&raw[MASTER_KEY_LEN..]);
        for part in parts {
            if let Some((value, len)) = part.split_once(':') {
                let value: u64 = value.parse().map_err(|_| SrtpError::BadKey("bad MKI"))?;
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| (1..=8).contains(l))
                    .ok_or(SrtpError::BadKey("MKI length is not 1-8"))?;
                if len < 8 && value >> (u32::from(len) * 8) != 0 {
                    return Err(SrtpError::BadKey("MKI does not fit its length"));
                }
                key.mki = Some((value, len));
            } else {
                key.lifetime = parse_lifetime(part)?;
            }
        }
        Ok(key)
    }
}

/// `2^20` or `1048576`, at most 2^48.
fn parse_lifetime(s: &str) -> Result<u64, SrtpError> {
    let bad = SrtpError::BadKey("bad key lifetime");
    let n = match s.strip_prefix("2^") {
        Some(exp) => {
            let exp: u32 = exp.parse().map_err(|_| bad.clone())?;
            1u64.checked_shl(exp)
                .filter(|_| exp < 64)
                .ok_or(bad.clone())?
        }
        None => s.parse::<u64>().map_err(|_| bad.clone())?,
    };
    if n == 0 {
        return Err(bad);
    }
    Ok(n.min(MAX_LIFETIME))
}

/// The session keys of one master key (RFC 3711 §4.3, key derivation rate 0).
#[derive(Clone)]
struct SessionKeys {
    cipher: [u8; 16],
    salt: [u8; MASTER_SALT_LEN],
    auth: [u8; 20],
}

/// The AES-CM PRF of §4.3.1/§4.3.3: `len` bytes of keystream under the master key, IV =
/// (master salt XOR (label ‖ r)) · 2^16 with r = 0.
fn derive(master_key: &[u8; 16], master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    // key_id = label ‖ r (7 bytes, right-aligned on the 14-byte salt): the label is byte 7.
    iv[7] ^= label;
    out.fill(0);
    Aes128Ctr::new(master_key.into(), &iv.into()).apply_keystream(out);
}

fn session_keys(key: &SdesKey) -> SessionKeys {
    let mut k = SessionKeys {
        cipher: [0; 16],
        salt: [0; 14],
        auth: [0; 20],
    };
    derive(&key.master_key, &key.master_salt, 0x00, &mut k.cipher);
    derive(&key.master_key, &key.master_salt, 0x01, &mut k.auth);
    derive(&key.master_key, &key.master_salt, 0x02, &mut k.salt);
    k
}

/// One outgoing stream's rollover state.
#[derive(Debug, Clone, Copy)]
struct Stream {
    ssrc: u32,
    roc: u32,
    last_seq: u16,
    used: u64,
}

/// Protects RTP packets with one SDES key (sans-IO): see the module doc.
pub struct SrtpSender {
    suite: Suite,
    keys: SessionKeys,
    mac: HmacSha1,
    mki: Option<(u64, u8)>,
    lifetime: u64,
    protected: u64,
    streams: Vec<Stream>,
    clock: u64,
    avoid: Option<u32>,
}

impl std::fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSender")
            .field("suite", &self.suite)
            .field("protected", &self.protected)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// The RTP header length of `packet` (fixed header, CSRCs, extension), if it is RTP v2.
fn header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if packet.len() < 12 || first >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= packet.len()).then_some(len)
}

impl SrtpSender {
    /// A sender for `key`.
    pub fn new(key: &SdesKey) -> SrtpSender {
        let keys = session_keys(key);
        let mac = <HmacSha1 as Mac>::new_from_slice(&keys.auth).expect("HMAC takes any key length");
        SrtpSender {
            suite: key.suite,
            keys,
            mac,
            mki: key.mki,
            lifetime: key.lifetime,
            protected: 0,
            streams: Vec::new(),
            clock: 0,
            avoid: None,
        }
    }

    /// The suite this sender protects with.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Refuses to protect packets with `ssrc` from now on (the peer's stream under the same
    /// key: the same SSRC and index would reuse its keystream).
    pub fn avoid_ssrc(&mut self, ssrc: Option<u32>) {
        self.avoid = ssrc;
    }

    /// Packets protected so far.
    pub fn protected(&self) -> u64 {
        self.protected
    }

    /// The packet index (§3.3.1) of `seq` on `ssrc`'s stream: the rollover counter goes up by
    /// one when the sequence number wraps (a jump back of more than half the space).
    fn index(&mut self, ssrc: u32, seq: u16) -> u64 {
        self.clock += 1;
        let clock = self.clock;
        let pos = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(p) => p,
            None => {
                if self.streams.len() >= MAX_STREAMS {
                    if let Some(lru) = self
                        .streams
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.used)
                        .map(|(i, _)| i)
                    {
                        self.streams.swap_remove(lru);
                    }
                }
                self.streams.push(Stream {
                    ssrc,
                    roc: 0,
                    last_seq: seq,
                    used: clock,
                });
                self.streams.len() - 1
            }
        };
        let s = &mut self.streams[pos];
        // RFC 3711 Appendix A: the rollover counter that puts `seq` closest to the highest
        // sequence number sent; only a newer index moves the stream forward.
        let roc = i64::from(s.roc);
        let v = if s.last_seq < 0x8000 {
            if seq > s.last_seq && seq - s.last_seq > 0x8000 {
                roc - 1
            } else {
                roc
            }
        } else if seq < s.last_seq - 0x8000 {
            roc + 1
        } else {
            roc
        };
        let v = u32::try_from(v).unwrap_or(0);
        let index = (u64::from(v) << 16) | u64::from(seq);
        if index > (u64::from(s.roc) << 16) | u64::from(s.last_seq) {
            s.roc = v;
            s.last_seq = seq;
        }
        s.used = clock;
        index
    }

    /// The SRTP packet of RTP `packet`: payload encrypted, MKI and authentication tag
    /// appended.
    pub fn protect(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let header = header_len(packet).ok_or(SrtpError::NotRtp)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if self.avoid == Some(ssrc) {
            return Err(SrtpError::PeerSsrc(ssrc));
        }
        if self.protected >= self.lifetime {
            return Err(SrtpError::KeyExpired);
        }
        let index = self.index(ssrc, seq);
        let roc = (index >> 16) as u32;
        // IV = (k_s · 2^16) XOR (SSRC · 2^64) XOR (i · 2^16) (§4.1.1).
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.keys.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        let mki_len = self.mki.map_or(0, |(_, l)| usize::from(l));
        let mut out = Vec::with_capacity(packet.len() + mki_len + self.suite.tag_len());
        out.extend_from_slice(packet);
        Aes128Ctr::new(&self.keys.cipher.into(), &iv.into()).apply_keystream(&mut out[header..]);
        // Tag over the authenticated portion (header + encrypted payload) ‖ ROC (§4.2).
        let mut mac = self.mac.clone();
        mac.update(&out);
        mac.update(&roc.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        if let Some((mki, len)) = self.mki {
            out.extend_from_slice(&mki.to_be_bytes()[8 - usize::from(len)..]);
        }
        out.extend_from_slice(&tag[..self.suite.tag_len()]);
        self.protected += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.3: key derivation.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let mk: [u8; 16] = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let ms: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let keys = session_keys(&SdesKey::new(1, Suite::AesCm128HmacSha1_80, mk, ms));
        assert_eq!(
            keys.cipher.to_vec(),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(keys.salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(
            keys.auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
        // The PRF continues past 20 bytes as the RFC lists it.
        let mut long = [0u8; 94];
        derive(&mk, &ms, 1, &mut long);
        assert_eq!(
            long.to_vec(),
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
            )
        );
    }

    /// RFC 3711 Appendix B.2: the AES-CM keystream of session key/salt for SSRC 0, index 0,
    /// as the payload cipher produces it (an all-zero payload encrypts to the keystream).
    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let mut sender = SrtpSender::new(&SdesKey::new(
            1,
            Suite::AesCm128HmacSha1_80,
            [0; 16],
            [0; 14],
        ));
        sender.keys.cipher = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
        sender.keys.salt = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        let mut rtp = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        rtp.resize(12 + 16 * 0xff02, 0);
        let out = sender.protect(&rtp).unwrap();
        let ks = &out[12..out.len() - 10];
        let block = |i: usize| ks[16 * i..16 * (i + 1)].to_vec();
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&160u32.wrapping_mul(u32::from(seq)).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn key(suite: Suite) -> SdesKey {
        SdesKey::new(1, suite, [7; 16], [9; 14])
    }

    /// A reference receiver written from the RFC's equations (independent of `protect`'s
    /// IV layout): checks the tag and decrypts with the index the receiver estimates.
    fn unprotect(key: &SdesKey, roc: u32, srtp: &[u8]) -> Option<Vec<u8>> {
        let k = session_keys(key);
        let tag_len = key.suite.tag_len();
        let mki_len = key.mki.map_or(0, |(_, l)| usize::from(l));
        let (auth, tag) = srtp.split_at(srtp.len() - tag_len);
        let auth = &auth[..auth.len() - mki_len];
        let mut mac = <HmacSha1 as Mac>::new_from_slice(&k.auth).unwrap();
        mac.update(auth);
        mac.update(&roc.to_be_bytes());
        if mac.finalize().into_bytes()[..tag_len] != *tag {
            return None;
        }
        let seq = u16::from_be_bytes([auth[2], auth[3]]);
        let ssrc = u32::from_be_bytes([auth[8], auth[9], auth[10], auth[11]]);
        let i = (u128::from(roc) << 16) | u128::from(seq);
        let salt = k.salt.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b));
        let iv = (salt << 16) ^ (u128::from(ssrc) << 64) ^ (i << 16);
        let mut out = auth.to_vec();
        let h = header_len(&out).unwrap();
        Aes128Ctr::new(&k.cipher.into(), &iv.to_be_bytes().into()).apply_keystream(&mut out[h..]);
        Some(out)
    }

    #[test]
    fn round_trip_both_suites_and_tag_lengths() {
        for (suite, tag) in [
            (Suite::AesCm128HmacSha1_80, 10),
            (Suite::AesCm128HmacSha1_32, 4),
        ] {
            let k = key(suite);
            let mut s = SrtpSender::new(&k);
            let plain = rtp(1, 0x1234_5678, &[0xd5; 160]);
            let out = s.protect(&plain).unwrap();
            assert_eq!(out.len(), plain.len() + tag);
            assert_eq!(out[..12], plain[..12], "header stays clear");
            assert_ne!(out[12..172], plain[12..], "payload encrypted");
            assert_eq!(unprotect(&k, 0, &out).unwrap(), plain);
            // A flipped bit fails authentication.
            let mut bad = out.clone();
            bad[20] ^= 1;
            assert!(unprotect(&k, 0, &bad).is_none());
        }
    }

    #[test]
    fn rollover_counter_advances_when_the_sequence_wraps() {
        let k = key(Suite::AesCm128HmacSha1_80);
        let mut s = SrtpSender::new(&k);
        // (65535 after the wrap: a late packet of the old cycle; 2 goes on in the new one.)
        for (seq, roc) in [
            (65534u16, 0u32),
            (65535, 0),
            (0, 1),
            (1, 1),
            (65535, 0),
            (2, 1),
        ] {
            let plain = rtp(seq, 42, &[1; 20]);
            let out = s.protect(&plain).unwrap();
            assert_eq!(unprotect(&k, roc, &out), Some(plain), "seq {seq} roc {roc}");
            assert!(unprotect(&k, roc ^ 1, &out).is_none());
        }
        // Another SSRC has its own counter.
        let plain = rtp(3, 43, &[1; 20]);
        assert_eq!(unprotect(&k, 0, &s.protect(&plain).unwrap()), Some(plain));
    }

    #[test]
    fn streams_are_bounded() {
        let mut s = SrtpSender::new(&key(Suite::AesCm128HmacSha1_80));
        for ssrc in 0..100 {
            s.protect(&rtp(1, ssrc, &[0; 4])).unwrap();
        }
        assert_eq!(s.streams.len(), MAX_STREAMS);
    }

    #[test]
    fn different_ssrcs_get_different_keystreams_and_the_peers_is_refused() {
        let mut s = SrtpSender::new(&key(Suite::AesCm128HmacSha1_80));
        let a = s.protect(&rtp(5, 1, &[0; 32])).unwrap();
        let b = s.protect(&rtp(5, 2, &[0; 32])).unwrap();
        assert_ne!(a[12..44], b[12..44]);
        s.avoid_ssrc(Some(2));
        assert_eq!(s.protect(&rtp(6, 2, &[0; 4])), Err(SrtpError::PeerSsrc(2)));
    }

    #[test]
    fn header_extension_and_csrcs_stay_clear() {
        let k = key(Suite::AesCm128HmacSha1_80);
        let mut s = SrtpSender::new(&k);
        // CC = 1, X = 1, one extension word.
        let mut p = vec![0x91, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 5];
        p.extend_from_slice(&[1, 2, 3, 4]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension
        p.extend_from_slice(&[0x55; 8]);
        let out = s.protect(&p).unwrap();
        assert_eq!(out[..24], p[..24]);
        assert_ne!(out[24..32], p[24..]);
        assert_eq!(unprotect(&k, 0, &out), Some(p));
        assert_eq!(s.protect(&[0x80; 11]), Err(SrtpError::NotRtp));
        assert_eq!(
            s.protect(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
            Err(SrtpError::NotRtp)
        );
        assert_eq!(s.protect(&[0x40; 12]), Err(SrtpError::NotRtp));
    }

    #[test]
    fn parses_sdes_attributes() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([3u8; 30]);
        let k = SdesKey::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}")).unwrap();
        assert_eq!(
            (k.tag, k.suite, k.lifetime, k.mki),
            (1, Suite::AesCm128HmacSha1_80, 1 << 48, None)
        );
        assert_eq!(k.master_key, [3; 16]);
        let k = SdesKey::parse(&format!(
            "2 AES_CM_128_HMAC_SHA1_32 inline:{b64}|2^20|1:4;inline:{b64} KDR=0"
        ))
        .unwrap();
        assert_eq!(
            (k.tag, k.suite, k.lifetime, k.mki),
            (2, Suite::AesCm128HmacSha1_32, 1 << 20, Some((1, 4)))
        );
        for bad in [
            "".to_owned(),
            "x AES_CM_128_HMAC_SHA1_80 inline:AAAA".to_owned(),
            format!("1 AEAD_AES_256_GCM inline:{b64}"),
            "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA".to_owned(),
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!".to_owned(),
            format!("1 AES_CM_128_HMAC_SHA1_80 uri:{b64}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^99"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|300:1"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64} UNENCRYPTED_SRTP"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64} KDR=20"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}{}", " x".repeat(300)),
        ] {
            assert!(SdesKey::parse(&bad).is_err(), "{bad}");
        }
        assert!(!format!("{k:?}").contains("3, 3"), "Debug hides the key");
    }

    #[test]
    fn mki_is_carried_and_lifetime_enforced() {
        let mut k = key(Suite::AesCm128HmacSha1_32);
        k.mki = Some((0x0102, 2));
        k.lifetime = 2;
        let mut s = SrtpSender::new(&k);
        let plain = rtp(1, 1, &[0; 10]);
        let out = s.protect(&plain).unwrap();
        assert_eq!(out.len(), plain.len() + 2 + 4);
        assert_eq!(out[plain.len()..plain.len() + 2], [1, 2]);
        assert_eq!(unprotect(&k, 0, &out), Some(plain));
        s.protect(&rtp(2, 1, &[0; 10])).unwrap();
        assert_eq!(s.protect(&rtp(3, 1, &[0; 10])), Err(SrtpError::KeyExpired));
    }
}
