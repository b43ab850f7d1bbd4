//! app_queue's availability rules (`is_member_available`, `get_member_status`).

use super::config::EmptyConditions;
use statebus::DeviceState;

/// Device-state part of `is_member_available`: INVALID and UNAVAILABLE never; INUSE, BUSY,
/// RINGING, RINGINUSE and ONHOLD only with ringinuse; NOT_INUSE and UNKNOWN unless paused (a
/// paused member is never available). Wrap-up is checked separately.
pub fn state_available(state: DeviceState, ringinuse: bool, paused: bool) -> bool {
    use DeviceState::*;
    match state {
        Invalid | Unavailable => false,
        InUse | Busy | Ringing | RingInUse | OnHold => ringinuse && !paused,
        NotInUse | Unknown => !paused,
    }
}

/// One member's contribution to `get_member_status`: true when the member does *not* count as
/// "empty" under `conditions` (so the queue is not empty).
pub fn counts_as_present(
    conditions: EmptyConditions,
    state: DeviceState,
    out_of_penalty: bool,
    paused: bool,
    in_wrapup: bool,
) -> bool {
    use DeviceState::*;
    if out_of_penalty && conditions.contains(EmptyConditions::PENALTY) {
        return false;
    }
    let excluded = match state {
        Invalid => conditions.contains(EmptyConditions::INVALID),
        Unavailable => conditions.contains(EmptyConditions::UNAVAILABLE),
        InUse => conditions.contains(EmptyConditions::INUSE),
        Ringing => conditions.contains(EmptyConditions::RINGING),
        Unknown => conditions.contains(EmptyConditions::UNKNOWN),
        _ => false,
    };
    if excluded {
        return false;
    }
    if paused && conditions.contains(EmptyConditions::PAUSED) {
        return false;
    }
    !(in_wrapup && conditions.contains(EmptyConditions::WRAPUP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    #[test]
    fn is_member_available_table() {
        for st in DeviceState::ALL {
            for ring in [false, true] {
                for paused in [false, true] {
                    let want = match st {
                        Invalid | Unavailable => false,
                        NotInUse | Unknown => !paused,
                        _ => ring && !paused,
                    };
                    assert_eq!(
                        state_available(st, ring, paused),
                        want,
                        "{st} {ring} {paused}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_factors() {
        let strict = EmptyConditions::parse("strict", true).expect("strict");
        assert!(!counts_as_present(strict, Unavailable, false, false, false));
        assert!(counts_as_present(strict, InUse, false, false, false));
        let inuse = EmptyConditions::parse("inuse", true).expect("inuse");
        assert!(!counts_as_present(inuse, InUse, false, false, false));
        assert!(counts_as_present(inuse, Busy, false, false, false));
        let w = EmptyConditions::parse("wrapup", true).expect("wrapup");
        assert!(!counts_as_present(w, NotInUse, false, false, true));
        use crate::engine::Penalties;
        let window = |max, min, raise| Penalties { max, min, raise };
        assert_eq!(window(Some(3), None, Some(2)).admit(1), Some(2));
        assert_eq!(window(Some(3), None, None).admit(5), None);
        assert_eq!(window(None, Some(1), None).admit(0), None);
        assert_eq!(Penalties::default().admit(-4), Some(-4));
        assert_eq!(
            EmptyConditions::parse("yes", true).expect("yes"),
            EmptyConditions::NONE
        );
        assert_eq!(
            EmptyConditions::parse("yes", false).expect("yes"),
            EmptyConditions::parse("penalty,invalid,paused", false).expect("list")
        );
    }
}
