//! Sans-IO allocation of RTP/RTCP port pairs (RTP on an even port, RTCP on the next odd one,
//! RFC 3550 §11) from a configured range.
//!
//! The allocator only does the bookkeeping; binding is the caller's closure passed to
//! [`PortAllocator::allocate`], so that a pair held by another process (the bind fails) is
//! skipped and the next free pair tried. Pairs are handed out round-robin, which keeps a
//! just-released pair unused for as long as possible (late packets of the old call do not land
//! in a new one).

use std::fmt;

use super::MediaError;

/// Hands out even/odd port pairs from `[min, max]`; never the same pair twice while it is held.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    /// The first RTP (even) port.
    first: u16,
    min: u16,
    max: u16,
    /// One entry per pair: held or not.
    held: Vec<bool>,
    in_use: usize,
    /// Index of the pair to try first next time.
    next: usize,
}

impl PortAllocator {
    /// An allocator for the pairs inside `[min, max]` (an odd `min` is rounded up to the next
    /// even port; a pair needs both ports inside the range).
    ///
    /// Errors with [`MediaError::InvalidPortRange`] when the range holds no pair or starts at 0.
    pub fn new(min: u16, max: u16) -> Result<Self, MediaError> {
        let invalid = MediaError::InvalidPortRange { min, max };
        if min == 0 || min > max {
            return Err(invalid);
        }
        let first = if min.is_multiple_of(2) {
            min
        } else {
            min.checked_add(1)
                .ok_or(MediaError::InvalidPortRange { min, max })?
        };
        if first >= max {
            return Err(invalid);
        }
        // Pairs (first + 2i, first + 2i + 1) with first + 2i + 1 <= max.
        let pairs = usize::from(max - first).div_ceil(2);
        Ok(PortAllocator {
            first,
            min,
            max,
            held: vec![false; pairs],
            in_use: 0,
            next: 0,
        })
    }

    /// How many pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.held.len()
    }

    /// How many pairs are held.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Whether the pair starting at `rtp_port` is held.
    pub fn is_held(&self, rtp_port: u16) -> bool {
        self.index(rtp_port).is_some_and(|i| self.held[i])
    }

    /// Takes the next free pair for which `bind(rtp_port)` succeeds and returns its RTP (even)
    /// port with what `bind` returned. Pairs whose `bind` fails are skipped (left free); each
    /// free pair is tried at most once per call.
    ///
    /// Errors with [`MediaError::PortsExhausted`] when no pair could be taken.
    pub fn allocate<T, E: fmt::Display>(
        &mut self,
        mut bind: impl FnMut(u16) -> Result<T, E>,
    ) -> Result<(u16, T), MediaError> {
        let n = self.held.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.held[i] {
                continue;
            }
            let port = self.port_of(i);
            match bind(port) {
                Ok(t) => {
                    self.held[i] = true;
                    self.in_use += 1;
                    self.next = (i + 1) % n;
                    return Ok((port, t));
                }
                Err(e) => {
                    tracing::debug!(port, error = %e, "RTP port pair unavailable, skipped");
                }
            }
        }
        Err(MediaError::PortsExhausted {
            min: self.min,
            max: self.max,
        })
    }

    /// Returns the pair starting at `rtp_port`; false if it was not held.
    pub fn release(&mut self, rtp_port: u16) -> bool {
        match self.index(rtp_port) {
            Some(i) if self.held[i] => {
                self.held[i] = false;
                self.in_use -= 1;
                true
            }
            _ => false,
        }
    }

    fn port_of(&self, i: usize) -> u16 {
        // i < capacity, so first + 2i + 1 <= max fits in u16.
        self.first + 2 * (i as u16)
    }

    fn index(&self, rtp_port: u16) -> Option<usize> {
        if rtp_port < self.first || !(rtp_port - self.first).is_multiple_of(2) {
            return None;
        }
        let i = usize::from((rtp_port - self.first) / 2);
        (i < self.held.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: u16) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn pairs_are_even_and_distinct_until_exhausted() {
        let mut a = PortAllocator::new(10000, 10005).unwrap();
        assert_eq!(a.capacity(), 3);
        let p: Vec<u16> = (0..3).map(|_| a.allocate(ok).unwrap().0).collect();
        assert_eq!(p, vec![10000, 10002, 10004]);
        assert_eq!(a.in_use(), 3);
        assert!(matches!(
            a.allocate(ok),
            Err(MediaError::PortsExhausted {
                min: 10000,
                max: 10005
            })
        ));
    }

    #[test]
    fn odd_bounds_round_inwards() {
        let mut a = PortAllocator::new(10001, 10006).unwrap();
        // 10002/10003, 10004/10005; 10006 has no odd partner in range.
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.allocate(ok).unwrap().0, 10002);
        assert_eq!(a.allocate(ok).unwrap().0, 10004);
        assert!(a.allocate(ok).is_err());
    }

    #[test]
    fn invalid_ranges() {
        for (min, max) in [(0, 100), (100, 99), (100, 100), (101, 102), (65535, 65535)] {
            assert!(
                matches!(
                    PortAllocator::new(min, max),
                    Err(MediaError::InvalidPortRange { .. })
                ),
                "{min}-{max}"
            );
        }
        assert_eq!(PortAllocator::new(65534, 65535).unwrap().capacity(), 1);
    }

    #[test]
    fn release_makes_pair_reusable_round_robin() {
        let mut a = PortAllocator::new(20000, 20005).unwrap();
        let (p0, _) = a.allocate(ok).unwrap();
        let (p1, _) = a.allocate(ok).unwrap();
        assert!(a.release(p0));
        assert!(!a.release(p0), "double release");
        assert!(!a.release(20001), "odd port is not a pair");
        assert!(!a.release(30000), "outside range");
        // Round-robin: the never-used pair comes before the just-released one.
        assert_eq!(a.allocate(ok).unwrap().0, 20004);
        assert_eq!(a.allocate(ok).unwrap().0, p0);
        assert!(a.is_held(p1));
        assert!(a.allocate(ok).is_err());
    }

    #[test]
    fn failing_binds_are_skipped_and_left_free() {
        let mut a = PortAllocator::new(30000, 30005).unwrap();
        let (p, ()) = a
            .allocate(|p| if p == 30000 { Err("in use") } else { Ok(()) })
            .unwrap();
        assert_eq!(p, 30002);
        assert!(!a.is_held(30000));
        let mut tried = Vec::new();
        let r = a.allocate(|p| {
            tried.push(p);
            Err::<(), _>("in use")
        });
        assert!(matches!(r, Err(MediaError::PortsExhausted { .. })));
        tried.sort_unstable();
        assert_eq!(tried, vec![30000, 30004], "each free pair tried once");
        assert_eq!(a.allocate(ok).unwrap().0, 30004);
    }
}
