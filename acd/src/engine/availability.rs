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

/// The caller's penalty window applied to a member penalty (`calc_metric` /
/// `get_member_status`): returns the effective penalty, or `None` when out of range.
pub fn penalty_in_range(
    penalty: i32,
    max: Option<i32>,
    min: Option<i32>,
    raise: Option<i32>,
) -> Option<i32> {
    let mut p = penalty;
    if let Some(r) = raise {
        if p < r {
            p = r;
        }
    }
    if max.is_some_and(|m| p > m) || min.is_some_and(|m| p < m) {
        return None;
    }
    Some(p)
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
        assert_eq!(penalty_in_range(1, Some(3), None, Some(2)), Some(2));
        assert_eq!(penalty_in_range(5, Some(3), None, None), None);
        assert_eq!(penalty_in_range(0, None, Some(1), None), None);
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
