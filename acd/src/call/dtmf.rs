//! RFC 4733 DTMF events in a caller's RTP, sans-IO: each key press is reported once (at its
//! first packet; the retransmitted end packets and the updates that follow are the same
//! event, told apart by the RTP timestamp).

/// Reads telephone-event packets of one RTP stream.
#[derive(Debug, Clone)]
pub struct Rfc4733 {
    payload_type: u8,
    last: Option<u32>,
}

impl Rfc4733 {
    /// A detector for events of `payload_type` (negotiated `telephone-event/8000`).
    pub fn new(payload_type: u8) -> Self {
        Rfc4733 {
            payload_type,
            last: None,
        }
    }

    /// One RTP packet; the key of a new event (`0`–`9`, `*`, `#`, `A`–`D`). Anything that is
    /// not a well-formed event of our payload type is ignored.
    pub fn push(&mut self, packet: &[u8]) -> Option<char> {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return None;
        }
        if packet[1] & 0x7f != self.payload_type {
            return None;
        }
        let cc = usize::from(packet[0] & 0x0f);
        let mut at = 12 + 4 * cc;
        if packet[0] & 0x10 != 0 {
            let ext = packet.get(at + 2..at + 4)?;
            at += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        let payload = packet.get(at..at + 4)?;
        let ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if self.last == Some(ts) {
            return None;
        }
        let key = match payload[0] {
            d @ 0..=9 => char::from(b'0' + d),
            10 => '*',
            11 => '#',
            e @ 12..=15 => char::from(b'A' + e - 12),
            _ => return None,
        };
        self.last = Some(ts);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pt: u8, ts: u32, event: u8, end: bool) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1];
        p.extend(ts.to_be_bytes());
        p.extend([0, 0, 0, 1]);
        p.extend([event, if end { 0x8a } else { 0x0a }, 0x01, 0x40]);
        p
    }

    #[test]
    fn one_key_press_is_one_digit() {
        let mut d = Rfc4733::new(101);
        assert_eq!(d.push(&event(101, 1000, 1, false)), Some('1'));
        assert_eq!(d.push(&event(101, 1000, 1, false)), None);
        for _ in 0..3 {
            assert_eq!(
                d.push(&event(101, 1000, 1, true)),
                None,
                "end retransmissions"
            );
        }
        assert_eq!(d.push(&event(101, 2000, 11, false)), Some('#'));
        assert_eq!(d.push(&event(101, 3000, 10, false)), Some('*'));
        // Audio, another payload type, truncated or garbage packets.
        assert_eq!(d.push(&event(8, 4000, 1, false)), None);
        assert_eq!(d.push(&event(101, 5000, 200, false)), None);
        assert_eq!(d.push(&[0x80, 101, 0, 1]), None);
        assert_eq!(d.push(&[0x00; 16]), None);
        let mut ext = event(101, 6000, 5, false);
        ext[0] |= 0x10; // an extension header claimed but missing
        assert_eq!(d.push(&ext[..16]), None);
    }
}
