//! Asterisk's device-state model (`main/devicestate.c`): the nine states, their wire strings and
//! the aggregation rules used both within one device and across servers.

use std::fmt;

/// One of Asterisk's nine device states. The discriminants are Asterisk's enum values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum DeviceState {
    /// `UNKNOWN` (0)
    #[default]
    Unknown = 0,
    /// `NOT_INUSE` (1)
    NotInUse = 1,
    /// `INUSE` (2)
    InUse = 2,
    /// `BUSY` (3)
    Busy = 3,
    /// `INVALID` (4)
    Invalid = 4,
    /// `UNAVAILABLE` (5)
    Unavailable = 5,
    /// `RINGING` (6)
    Ringing = 6,
    /// `RINGINUSE` (7)
    RingInUse = 7,
    /// `ONHOLD` (8)
    OnHold = 8,
}

impl DeviceState {
    /// All nine states, in enum order.
    pub const ALL: [DeviceState; 9] = [
        DeviceState::Unknown,
        DeviceState::NotInUse,
        DeviceState::InUse,
        DeviceState::Busy,
        DeviceState::Invalid,
        DeviceState::Unavailable,
        DeviceState::Ringing,
        DeviceState::RingInUse,
        DeviceState::OnHold,
    ];

    /// The wire string (`ast_devstate_str`).
    pub fn as_wire(self) -> &'static str {
        match self {
            DeviceState::Unknown => "UNKNOWN",
            DeviceState::NotInUse => "NOT_INUSE",
            DeviceState::InUse => "INUSE",
            DeviceState::Busy => "BUSY",
            DeviceState::Invalid => "INVALID",
            DeviceState::Unavailable => "UNAVAILABLE",
            DeviceState::Ringing => "RINGING",
            DeviceState::RingInUse => "RINGINUSE",
            DeviceState::OnHold => "ONHOLD",
        }
    }

    /// Parse a state typed by a person (command line, configuration): case-insensitive,
    /// surrounding whitespace ignored, anything unrecognised is `UNKNOWN`. What arrives from the
    /// wire is read by [`DeviceState::from_devstate_val`] instead.
    pub fn from_wire(s: &str) -> DeviceState {
        DeviceState::from_devstate_val(s.trim())
    }

    /// `ast_devstate_val` exactly, as res_xmpp applies it to a received `<state>`: the whole
    /// text compared case-insensitively (ASCII, `strcasecmp`) with the eight names it knows,
    /// no trimming; anything else (`UNKNOWN`, ` INUSE`, `in use`) is `UNKNOWN`.
    pub fn from_devstate_val(s: &str) -> DeviceState {
        DeviceState::ALL
            .into_iter()
            .find(|st| st.as_wire().eq_ignore_ascii_case(s))
            .unwrap_or(DeviceState::Unknown)
    }

    /// Rank in the aggregation priority order (low to high):
    /// INVALID < UNKNOWN < UNAVAILABLE < NOT_INUSE < ONHOLD < RINGING < INUSE < BUSY < RINGINUSE.
    pub fn aggregate_rank(self) -> u8 {
        match self {
            DeviceState::Invalid => 0,
            DeviceState::Unknown => 1,
            DeviceState::Unavailable => 2,
            DeviceState::NotInUse => 3,
            DeviceState::OnHold => 4,
            DeviceState::Ringing => 5,
            DeviceState::InUse => 6,
            DeviceState::Busy => 7,
            DeviceState::RingInUse => 8,
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire())
    }
}

/// `ast_devstate_aggregate`: folds states into one, as Asterisk does within a device (several
/// channels) and across servers (one entry per EID).
#[derive(Debug, Clone, Copy, Default)]
pub struct Aggregate {
    ringing: bool,
    busy_like: bool,
    state: Option<DeviceState>,
}

impl Aggregate {
    /// An empty aggregate; its result is `INVALID` until a state is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one state.
    pub fn add(&mut self, st: DeviceState) {
        match st {
            DeviceState::Ringing => self.ringing = true,
            DeviceState::InUse | DeviceState::OnHold | DeviceState::Busy => self.busy_like = true,
            _ => {}
        }
        let cur = self.state.unwrap_or(DeviceState::Invalid);
        if st.aggregate_rank() > cur.aggregate_rank() {
            self.state = Some(st);
        } else if self.state.is_none() {
            self.state = Some(cur);
        }
    }

    /// The aggregate: the highest-priority state, except RINGING together with
    /// INUSE/ONHOLD/BUSY which gives RINGINUSE.
    pub fn result(&self) -> DeviceState {
        if self.ringing && self.busy_like {
            return DeviceState::RingInUse;
        }
        self.state.unwrap_or(DeviceState::Invalid)
    }

    /// Aggregate an iterator of states.
    pub fn of<I: IntoIterator<Item = DeviceState>>(states: I) -> DeviceState {
        let mut a = Aggregate::new();
        for s in states {
            a.add(s);
        }
        a.result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    #[test]
    fn wire_strings_round_trip_and_parse_case_insensitively() {
        for st in DeviceState::ALL {
            assert_eq!(DeviceState::from_wire(st.as_wire()), st);
            assert_eq!(DeviceState::from_wire(&st.as_wire().to_lowercase()), st);
        }
        assert_eq!(DeviceState::from_wire("not_InUse"), NotInUse);
        assert_eq!(DeviceState::from_wire("garbage"), Unknown);
        assert_eq!(DeviceState::from_wire(""), Unknown);
        assert_eq!(DeviceState::from_wire(" INUSE\n"), InUse);
        // ast_devstate_val: no trimming
        assert_eq!(DeviceState::from_devstate_val(" INUSE\n"), Unknown);
        assert_eq!(DeviceState::from_devstate_val("ringInUse"), RingInUse);
        assert_eq!(DeviceState::from_devstate_val("INUSE\u{0}"), Unknown);
        assert_eq!(InUse as u8, 2);
        assert_eq!(OnHold as u8, 8);
    }

    #[test]
    fn aggregate_follows_priority_order() {
        let order = [
            Invalid,
            Unknown,
            Unavailable,
            NotInUse,
            OnHold,
            Ringing,
            InUse,
            Busy,
            RingInUse,
        ];
        for (i, lo) in order.iter().enumerate() {
            for hi in &order[i..] {
                let got = Aggregate::of([*lo, *hi]);
                let ringinuse_rule =
                    matches!((lo, hi), (Ringing, InUse | Busy) | (OnHold, Ringing));
                if ringinuse_rule {
                    assert_eq!(got, RingInUse, "{lo} + {hi}");
                } else {
                    assert_eq!(got, *hi, "{lo} + {hi}");
                }
            }
        }
    }

    #[test]
    fn ringing_with_inuse_onhold_or_busy_is_ringinuse() {
        assert_eq!(Aggregate::of([Ringing, InUse]), RingInUse);
        assert_eq!(Aggregate::of([InUse, Ringing]), RingInUse);
        assert_eq!(Aggregate::of([OnHold, Ringing]), RingInUse);
        assert_eq!(Aggregate::of([Ringing, Busy]), RingInUse);
        assert_eq!(Aggregate::of([Ringing, NotInUse]), Ringing);
        assert_eq!(Aggregate::of([Ringing, Ringing]), Ringing);
    }

    #[test]
    fn empty_aggregate_is_invalid_and_docs_example_holds() {
        assert_eq!(Aggregate::of([]), Invalid);
        // Custom:mystate INUSE on server1 and NOT_INUSE on server2 aggregates to INUSE.
        assert_eq!(Aggregate::of([InUse, NotInUse]), InUse);
        assert_eq!(Aggregate::of([Unavailable, NotInUse]), NotInUse);
    }
}
