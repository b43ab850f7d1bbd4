//! The `[overload]` section: SIP overload control of the gateway (issue 16,
//! `sip_core::overload`).

use super::Loaded;
use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::time::Duration;

/// `[overload]`: every key optional, defaults from `sip_core::overload::Config`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OverloadSection {
    /// Standing queue (the smallest wait of a received message over an interval) above
    /// which the gateway sheds load (default 20 ms).
    pub target_ms: Option<u64>,
    /// The measuring interval (default 100 ms).
    pub interval_ms: Option<u64>,
    /// A standing queue above this refuses requests with credentials too (default 200 ms).
    pub hard_delay_ms: Option<u64>,
    /// Lowest fraction of new requests admitted while shedding, 0.001 to 1 (default 0.02).
    pub min_admit: Option<f64>,
    /// `Retry-After` of the 503s, seconds, 1 to 3600 (default 2).
    pub retry_after_secs: Option<u32>,
}

impl Loaded {
    /// The validated `[overload]` section (defaults when absent).
    pub fn overload(&self) -> Result<sip_core::overload::Config> {
        let d = sip_core::overload::Config::default();
        let Some(s) = &self.config.overload else {
            return Ok(d);
        };
        let ms = |key: &str, v: Option<u64>, default: Duration| -> Result<Duration> {
            match v {
                None => Ok(default),
                Some(ms) if (1..=60_000).contains(&ms) => Ok(Duration::from_millis(ms)),
                Some(ms) => Err(anyhow!(
                    "{}: {key} = {ms} is not between 1 and 60000 milliseconds",
                    self.at("overload", key)
                )),
            }
        };
        let target = ms("target_ms", s.target_ms, d.target)?;
        let interval = ms("interval_ms", s.interval_ms, d.interval)?;
        let hard_delay = ms("hard_delay_ms", s.hard_delay_ms, d.hard_delay)?;
        if hard_delay < target {
            return Err(anyhow!(
                "{}: hard_delay_ms ({}) must not be below target_ms ({})",
                self.at("overload", "hard_delay_ms"),
                hard_delay.as_millis(),
                target.as_millis()
            ));
        }
        let min_admit = match s.min_admit {
            None => d.min_admit,
            Some(x) if x.is_finite() && (0.001..=1.0).contains(&x) => x,
            Some(x) => {
                return Err(anyhow!(
                    "{}: min_admit = {x} is not a fraction between 0.001 and 1",
                    self.at("overload", "min_admit")
                ))
            }
        };
        let retry_after = match s.retry_after_secs {
            None => d.retry_after,
            Some(x) if (1..=3600).contains(&x) => x,
            Some(x) => {
                return Err(anyhow!(
                    "{}: retry_after_secs = {x} is not between 1 and 3600 seconds",
                    self.at("overload", "retry_after_secs")
                ))
            }
        };
        Ok(sip_core::overload::Config {
            target,
            interval,
            min_admit,
            hard_delay,
            retry_after,
        })
    }
}
