//! Asterisk entity IDs: 6 bytes in MAC-address form, written lowercase with colons.

use sha2::{Digest, Sha256};
use std::{fmt, str::FromStr};

/// A node's entity ID (`asterisk.conf` `entityid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eid(pub [u8; 6]);

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid EID {0:?}: expected six hex bytes separated by colons, like 00:11:22:33:44:55")]
pub struct EidParseError(pub String);

impl Eid {
    /// A stable EID derived from a seed (the binary uses host name + node name): the same seed
    /// always gives the same EID. The locally-administered bit is set and the multicast bit
    /// cleared so it can never collide with a real NIC's MAC address.
    pub fn derive(seed: &str) -> Eid {
        let h = Sha256::digest(seed.as_bytes());
        let mut b = [0u8; 6];
        b.copy_from_slice(&h[..6]);
        b[0] = (b[0] | 0x02) & !0x01;
        Eid(b)
    }
}

impl fmt::Display for Eid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Eid {
    type Err = EidParseError;

    /// Accepts what Asterisk's `%2x:%2x:…` accepts in practice: six groups of one or two hex
    /// digits, either case.
    fn from_str(s: &str) -> Result<Eid, EidParseError> {
        let err = || EidParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.trim().split(':') {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(Eid(out))
    }
}

impl serde::Serialize for Eid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Eid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Eid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lowercase_colon_hex() {
        let e = Eid([0x00, 0x11, 0x22, 0xAA, 0xbb, 0x0f]);
        assert_eq!(e.to_string(), "00:11:22:aa:bb:0f");
        assert_eq!(e.to_string().len(), 17);
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "00:11:22:33:44:55".parse::<Eid>().unwrap(),
            Eid([0, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
        assert_eq!(
            "0:1:2:A:B:FF".parse::<Eid>().unwrap(),
            Eid([0, 1, 2, 0xa, 0xb, 0xff])
        );
        for bad in [
            "",
            "00:11:22:33:44",
            "00:11:22:33:44:55:66",
            "zz:11:22:33:44:55",
            "001:1:2:3:4:5",
            "00::22:33:44:55",
        ] {
            assert!(bad.parse::<Eid>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_eids_are_stable_distinct_and_local() {
        let a = Eid::derive("host1/gw-a");
        assert_eq!(a, Eid::derive("host1/gw-a"));
        assert_ne!(a, Eid::derive("host1/gw-b"));
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert_eq!(a.to_string().parse::<Eid>().unwrap(), a);
    }
}
