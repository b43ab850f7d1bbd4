//! How full the flat state nodes are, sans-IO. A server keeps at most `max_items` items on a
//! node and evicts the oldest beyond that (Prosody and ejabberd both do, silently), so a fabric
//! that outgrows it loses keys for late joiners. The bus warns once as a node reaches 90 % of
//! `max_items`, and again only after it fell below 80 % (so a count hovering at the threshold
//! does not repeat the warning).

/// Warn at this share of `max_items` (percent).
pub const WARN_PERCENT: u64 = 90;
/// Re-arm the warning below this share (percent).
pub const REARM_PERCENT: u64 = 80;

/// The fill watch of one node.
#[derive(Debug, Clone)]
pub struct FillWatch {
    max_items: u32,
    warned: bool,
}

impl FillWatch {
    /// A watch for a node holding at most `max_items` items.
    pub fn new(max_items: u32) -> Self {
        FillWatch {
            max_items,
            warned: false,
        }
    }

    /// The node holds (about) `items` items now. True when the count reached the warning
    /// level and no warning was given since it was last below the re-arm level.
    pub fn observe(&mut self, items: usize) -> bool {
        let items = items as u64 * 100;
        let max = u64::from(self.max_items);
        if items >= max * WARN_PERCENT {
            !std::mem::replace(&mut self.warned, true)
        } else {
            if items < max * REARM_PERCENT {
                self.warned = false;
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_at_ninety_percent_and_rearms_below_eighty() {
        let mut w = FillWatch::new(10_000);
        assert!(!w.observe(0));
        assert!(!w.observe(8_999));
        assert!(w.observe(9_000));
        assert!(!w.observe(9_000));
        assert!(!w.observe(10_500));
        assert!(!w.observe(8_000), "between 80 and 90 %: still armed off");
        assert!(!w.observe(9_100));
        assert!(!w.observe(7_999));
        assert!(w.observe(9_500), "re-armed below 80 %");
    }

    #[test]
    fn small_and_zero_limits() {
        let mut w = FillWatch::new(20);
        assert!(!w.observe(17));
        assert!(w.observe(18));
        let mut z = FillWatch::new(0);
        assert!(z.observe(0), "a node that holds nothing is always full");
    }
}
