//! `[supervisors]`: who may listen to, whisper to and barge into calls from the phone, and the
//! feature codes they dial (Asterisk's ChanSpy `q`, `w`, `B`).

use anyhow::{anyhow, Result};
use serde::Deserialize;

use super::Loaded;

/// `[supervisors]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorsSection {
    /// Device user names allowed to spy (others get 403).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Feature code for listen, followed by the extension (default `*222`).
    pub listen: Option<String>,
    /// Feature code for whisper (default `*223`).
    pub whisper: Option<String>,
    /// Feature code for barge (default `*224`).
    pub barge: Option<String>,
}

impl Loaded {
    /// The gateway's spy settings (defaults without `[supervisors]`: nobody may spy).
    pub(super) fn spy(&self) -> Result<gateway::server::SpyConfig> {
        let mut c = gateway::server::SpyConfig::default();
        let Some(s) = &self.config.supervisors else {
            return Ok(c);
        };
        for (key, v, slot) in [
            ("listen", &s.listen, &mut c.listen),
            ("whisper", &s.whisper, &mut c.whisper),
            ("barge", &s.barge, &mut c.barge),
        ] {
            if let Some(v) = v {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|ch| ch.is_ascii_digit() || ch == '*' || ch == '#')
                {
                    return Err(anyhow!(
                        "{}: feature code {v:?}: digits, '*' and '#' only, not empty",
                        self.at("supervisors", key)
                    ));
                }
                *slot = v.clone();
            }
        }
        let codes = [&c.listen, &c.whisper, &c.barge];
        if codes[0] == codes[1] || codes[1] == codes[2] || codes[0] == codes[2] {
            return Err(anyhow!(
                "{}: listen, whisper and barge need three different feature codes",
                self.at("supervisors", "listen")
            ));
        }
        c.supervisors = s.devices.clone();
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Loaded;

    fn spy(extra: &str) -> anyhow::Result<gateway::server::SpyConfig> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("site-a.toml");
        let base = "[node]\nname = \"a\"\n\n[gateway]\nudp = [\"127.0.0.1:5060\"]\n\
                    realm = \"r\"\ndatabase = \"sqlite://x.db\"\n";
        std::fs::write(&p, format!("{base}{extra}"))?;
        Loaded::read(&p)?.spy()
    }

    #[test]
    fn supervisors_section_is_read_and_checked() {
        let c = spy("").expect("no section");
        assert!(c.supervisors.is_empty() && c.listen == "*222");
        let c = spy("[supervisors]\ndevices = [\"2000\"]\nbarge = \"*99\"\n").expect("ok");
        assert_eq!(c.supervisors, ["2000"]);
        assert_eq!((c.whisper.as_str(), c.barge.as_str()), ("*223", "*99"));
        let e = spy("[supervisors]\nlisten = \"*2x\"\n").expect_err("bad code");
        assert!(e.to_string().contains("site-a.toml:9:"), "{e}");
        let e = spy("[supervisors]\nlisten = \"*223\"\n").expect_err("same codes");
        assert!(e.to_string().contains("three different"), "{e}");
    }
}
