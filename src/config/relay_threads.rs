//! `rtp_threads` of `[gateway]` and `[acd]`: how many threads the RTP relay runs (issue 16).

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
}
