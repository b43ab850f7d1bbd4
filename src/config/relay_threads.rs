//! `rtp_threads`, `rtp_realtime_priority` and `rtp_coalesce_us` of `[gateway]` and `[acd]`:
//! how many threads the RTP relay runs and how they are scheduled (issue 16).

use anyhow::{anyhow, Result};

use super::Loaded;

impl Loaded {
    /// `rtp_threads` in `[section]`: absent → one per core; otherwise 1 to
    /// `media::MAX_RELAY_THREADS`, or an error naming the file and line.
    pub(super) fn rtp_threads(&self, section: &str, v: Option<i64>) -> Result<usize> {
        let max = ::media::MAX_RELAY_THREADS;
        match v {
            None => Ok(::media::relay_threads_per_core()),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    anyhow!(
                        "{}: rtp_threads = {n} is not a number of relay threads from 1 to {max}",
                        self.at(section, "rtp_threads")
                    )
                }),
        }
    }
}

/// `rtp_coalesce_us` when absent: a packet waits at most 0.2 ms more, and at 1,000 streams a
/// relay thread wakes about once per 5 packets instead of once per 1–2 (docs/BENCHMARKS.md).
const DEFAULT_COALESCE_US: i64 = 200;
/// The largest `rtp_coalesce_us`: 1 ms of added delay is far inside any jitter buffer; more
/// would only be a mistake.
const MAX_COALESCE_US: i64 = 1000;

impl Loaded {
    /// `rtp_realtime_priority` (1 to 99, absent: ordinary priority) and `rtp_coalesce_us`
    /// (0 to 1000, absent: 200) in `[section]`, or an error naming the file and line.
    pub(super) fn rtp_scheduling(
        &self,
        section: &str,
        priority: Option<i64>,
        coalesce_us: Option<i64>,
    ) -> Result<::media::RelayScheduling> {
        let realtime_priority = match priority {
            None => None,
            Some(p) => Some(
                u8::try_from(p)
                    .ok()
                    .filter(|p| (1..=99).contains(p))
                    .ok_or_else(|| {
                        anyhow!(
                        "{}: rtp_realtime_priority = {p} is not a SCHED_FIFO priority from 1 to 99",
                        self.at(section, "rtp_realtime_priority")
                    )
                    })?,
            ),
        };
        let us = coalesce_us.unwrap_or(DEFAULT_COALESCE_US);
        if !(0..=MAX_COALESCE_US).contains(&us) {
            return Err(anyhow!(
                "{}: rtp_coalesce_us = {us} is not a number of microseconds from 0 to {MAX_COALESCE_US}",
                self.at(section, "rtp_coalesce_us")
            ));
        }
        Ok(::media::RelayScheduling {
            realtime_priority,
            coalesce: std::time::Duration::from_micros(us.unsigned_abs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Loaded;

    fn load(extra: &str) -> anyhow::Result<Loaded> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("site-a.toml");
        let base = "[node]\nname = \"a\"\n\n[gateway]\nudp = [\"127.0.0.1:5060\"]\n\
                    realm = \"r\"\ndatabase = \"sqlite://x.db\"\n";
        std::fs::write(&p, format!("{base}{extra}"))?;
        Loaded::read(&p)
    }

    #[test]
    fn rtp_threads_default_to_one_per_core_and_are_checked() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let g = load("").and_then(|l| l.gateway()).expect("default");
        assert_eq!(g.rtp_threads, cores);
        let g = load("rtp_threads = 3\n")
            .and_then(|l| l.gateway())
            .expect("three");
        assert_eq!(g.rtp_threads, 3);
        for bad in ["0", "-1", "257"] {
            let e = load(&format!("rtp_threads = {bad}\n"))
                .and_then(|l| l.gateway())
                .expect_err(bad)
                .to_string();
            assert!(
                e.contains("site-a.toml:8:") && e.contains(&format!("rtp_threads = {bad}")),
                "{e}"
            );
        }
        let acd = "\n[acd]\nudp = \"127.0.0.1:5070\"\nrtp_threads = 0\n";
        let e = load(acd)
            .and_then(|l| l.acd(None))
            .expect_err("acd 0")
            .to_string();
        assert!(
            e.contains("site-a.toml:11:") && e.contains("rtp_threads = 0"),
            "{e}"
        );
    }

    #[test]
    fn relay_scheduling_defaults_and_checks() {
        use std::time::Duration;
        let g = load("").and_then(|l| l.gateway()).expect("default");
        assert_eq!(g.rtp_scheduling.realtime_priority, None);
        assert_eq!(g.rtp_scheduling.coalesce, Duration::from_micros(200));
        let g = load(
            "rtp_realtime_priority = 10
rtp_coalesce_us = 0
",
        )
        .and_then(|l| l.gateway())
        .expect("set");
        assert_eq!(g.rtp_scheduling.realtime_priority, Some(10));
        assert_eq!(g.rtp_scheduling.coalesce, Duration::ZERO);
        for (bad, key) in [
            ("rtp_realtime_priority = 0", "rtp_realtime_priority = 0"),
            ("rtp_realtime_priority = 100", "rtp_realtime_priority = 100"),
            ("rtp_coalesce_us = -1", "rtp_coalesce_us = -1"),
            ("rtp_coalesce_us = 1001", "rtp_coalesce_us = 1001"),
        ] {
            let e = load(&format!("{bad}\n"))
                .and_then(|l| l.gateway())
                .expect_err(bad)
                .to_string();
            assert!(e.contains("site-a.toml:8:") && e.contains(key), "{e}");
        }
        let acd = "\n[acd]\nudp = \"127.0.0.1:5070\"\nrtp_realtime_priority = 10\n\
                   rtp_coalesce_us = 50\n\n[[acd.gateway]]\nname = \"gw\"\n\
                   address = \"127.0.0.1:5060\"\n";
        let a = load(acd).and_then(|l| l.acd(None)).expect("acd");
        assert_eq!(a.rtp_scheduling.realtime_priority, Some(10));
        assert_eq!(a.rtp_scheduling.coalesce, Duration::from_micros(50));
        let acd = "\n[acd]\nudp = \"127.0.0.1:5070\"\nrtp_realtime_priority = 200\n";
        let e = load(acd)
            .and_then(|l| l.acd(None))
            .expect_err("acd 200")
            .to_string();
        assert!(
            e.contains("site-a.toml:11:") && e.contains("rtp_realtime_priority = 200"),
            "{e}"
        );
    }
}
