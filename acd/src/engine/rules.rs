//! Penalty rules (queuerules.conf `penaltychange => seconds,max[,min[,raise]]`).

use super::EngineError;
use std::str::FromStr;
use std::time::Duration;

/// One value of a penalty change: absolute or relative to the caller's current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleValue {
    /// Set to this value.
    Abs(i32),
    /// Add this (possibly negative) value.
    Rel(i32),
}

impl RuleValue {
    fn parse(s: &str) -> Result<Self, EngineError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(RuleValue::Rel(0));
        }
        let bad = || EngineError::BadRule(format!("bad penalty value {s:?}"));
        if let Some(rest) = s.strip_prefix('+') {
            return rest.parse().map(RuleValue::Rel).map_err(|_| bad());
        }
        if s.starts_with('-') {
            return s.parse().map(RuleValue::Rel).map_err(|_| bad());
        }
        s.parse().map(RuleValue::Abs).map_err(|_| bad())
    }

    /// Apply to a value that was set at join; values unset at join stay unset (app_queue's
    /// `update_qe_rule`). Results below 0 become 0.
    pub fn apply(self, cur: Option<i32>) -> Option<i32> {
        cur.map(|c| {
            let v = match self {
                RuleValue::Abs(v) => v,
                RuleValue::Rel(d) => c.saturating_add(d),
            };
            v.max(0)
        })
    }
}

/// One `penaltychange` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyRule {
    /// Seconds after the caller joined.
    pub time: Duration,
    /// Change of QUEUE_MAX_PENALTY.
    pub max: RuleValue,
    /// Change of QUEUE_MIN_PENALTY.
    pub min: RuleValue,
    /// Change of QUEUE_RAISE_PENALTY.
    pub raise: RuleValue,
}

impl FromStr for PenaltyRule {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix("penaltychange")
            .map(|r| {
                r.trim_start()
                    .trim_start_matches("=>")
                    .trim_start_matches('=')
            })
            .unwrap_or(s);
        let f: Vec<&str> = body.split(',').map(str::trim).collect();
        let secs: i64 = f
            .first()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| EngineError::BadRule(format!("bad rule time in {s:?}")))?;
        if secs < 0 {
            return Err(EngineError::BadRule(format!("negative rule time in {s:?}")));
        }
        let max = f.get(1).map(|v| RuleValue::parse(v)).transpose()?;
        let Some(max) = max else {
            return Err(EngineError::BadRule(format!("no max penalty in {s:?}")));
        };
        let min = RuleValue::parse(f.get(2).copied().unwrap_or(""))?;
        let raise = RuleValue::parse(f.get(3).copied().unwrap_or(""))?;
        Ok(PenaltyRule {
            time: Duration::from_secs(secs.unsigned_abs()),
            max,
            min,
            raise,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_abs_rel_and_defaults() {
        let r: PenaltyRule = "30,+2".parse().expect("rule");
        assert_eq!(r.time, Duration::from_secs(30));
        assert_eq!(r.max, RuleValue::Rel(2));
        assert_eq!(r.min, RuleValue::Rel(0));
        let r: PenaltyRule = "penaltychange => 60,5,-1,2".parse().expect("rule");
        assert_eq!(
            (r.max, r.min, r.raise),
            (RuleValue::Abs(5), RuleValue::Rel(-1), RuleValue::Abs(2))
        );
        assert!("x,1".parse::<PenaltyRule>().is_err());
        assert!("10".parse::<PenaltyRule>().is_err());
        assert_eq!(RuleValue::Rel(-5).apply(Some(2)), Some(0));
        assert_eq!(RuleValue::Abs(5).apply(None), None);
    }
}
