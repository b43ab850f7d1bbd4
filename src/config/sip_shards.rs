//! `sip_shards` of `[gateway]`: how many register shards the SIP core runs (issue 16).

use anyhow::{anyhow, Result};

use super::Loaded;

/// Most register shards.
pub const MAX_SIP_SHARDS: usize = 256;

impl Loaded {
    /// `sip_shards` in `[gateway]`: absent → 1 (unsharded: on two cores the shards gained no
    /// rate and cost CPU; see docs/BENCHMARKS.md);
    /// otherwise 1 to [`MAX_SIP_SHARDS`], or an error naming the file, line and key.
    pub(super) fn sip_shards(&self, v: Option<i64>) -> Result<usize> {
        match v {
            None => Ok(1),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_SIP_SHARDS).contains(n))
                .ok_or_else(|| {
                    anyhow!(
                        "{}: sip_shards = {n} is not a number of register shards from 1 \
                         (unsharded) to {MAX_SIP_SHARDS}",
                        self.at("gateway", "sip_shards")
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
    fn sip_shards_default_to_unsharded_and_are_checked() {
        let g = load("").and_then(|l| l.gateway()).expect("default");
        assert_eq!(g.sip_shards, 1);
        for (text, n) in [("sip_shards = 1\n", 1), ("sip_shards = 4\n", 4)] {
            let g = load(text).and_then(|l| l.gateway()).expect(text);
            assert_eq!(g.sip_shards, n);
        }
        for bad in ["0", "-2", "257"] {
            let e = load(&format!("sip_shards = {bad}\n"))
                .and_then(|l| l.gateway())
                .expect_err(bad)
                .to_string();
            assert!(
                e.contains("site-a.toml:8:") && e.contains(&format!("sip_shards = {bad}")),
                "{e}"
            );
        }
    }
}
