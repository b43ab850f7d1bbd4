//! The `[security]` section (authentication defence) and secrets that may come from a file or
//! the environment instead of the config file.

use super::Loaded;
use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::path::Path;

/// `[security]`: see `gateway::security` and docs/SECURITY.md.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// Failures are counted over this window (default 60 s).
    pub window_secs: Option<f64>,
    /// Failures from one IP within the window that ban it (default 10; 0: never).
    pub max_failures_per_source: Option<u32>,
    /// Failures for one user within the window that guard it: each further failure for it
    /// bans its source at once (default 20; 0: never).
    pub max_failures_per_user: Option<u32>,
    /// Ban length (default 600 s).
    pub ban_secs: Option<f64>,
    /// Challenges per second one source may draw (default 200; 0: unlimited).
    pub challenges_per_sec: Option<u32>,
    /// Burst of challenges above the rate (default twice the rate).
    pub challenge_burst: Option<u32>,
    /// IP addresses never banned nor rate-limited (the trunks' are added).
    #[serde(default)]
    pub never_ban: Vec<String>,
}

impl Loaded {
    /// The validated `[security]` section (defaults when absent).
    pub fn security(&self) -> Result<gateway::security::SecurityConfig> {
        let d = gateway::security::SecurityConfig::default();
        let Some(s) = &self.config.security else {
            return Ok(d);
        };
        let window = self.duration("security", "window_secs", s.window_secs, d.window)?;
        let ban = self.duration("security", "ban_secs", s.ban_secs, d.ban_time)?;
        let never_ban = s
            .never_ban
            .iter()
            .map(|ip| {
                ip.parse().map_err(|_| {
                    anyhow!(
                        "{}: {ip:?} is not an IP address",
                        self.at("security", "never_ban")
                    )
                })
            })
            .collect::<Result<_>>()?;
        let rate = s.challenges_per_sec.unwrap_or(d.challenges_per_sec);
        let burst = s.challenge_burst.unwrap_or(rate.saturating_mul(2));
        if rate > 0 && burst == 0 {
            return Err(anyhow!(
                "{}: challenge_burst = 0 would refuse every challenge; use at least 1",
                self.at("security", "challenge_burst")
            ));
        }
        Ok(gateway::security::SecurityConfig {
            window,
            max_failures_per_source: s
                .max_failures_per_source
                .unwrap_or(d.max_failures_per_source),
            max_failures_per_user: s.max_failures_per_user.unwrap_or(d.max_failures_per_user),
            ban_time: ban,
            challenges_per_sec: rate,
            challenge_burst: burst,
            never_ban,
            max_tracked: d.max_tracked,
        })
    }

    /// A secret given inline (`key`), in a file (`key_file`, relative to the config file;
    /// one trailing newline dropped) or in an environment variable (`key_env`): exactly one
    /// of them, or none (`Ok(None)`). `at` names where the keys are (file:line).
    pub fn secret(
        &self,
        at: &str,
        key: &str,
        inline: Option<&String>,
        file: Option<&String>,
        env: Option<&String>,
    ) -> Result<Option<String>> {
        match (inline, file, env) {
            (None, None, None) => Ok(None),
            (Some(v), None, None) => Ok(Some(v.clone())),
            (None, Some(f), None) => {
                let path = self.path.parent().unwrap_or(Path::new(".")).join(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    anyhow!("{at}: {key}_file: cannot read {}: {e}", path.display())
                })?;
                let v = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                if v.is_empty() {
                    return Err(anyhow!("{at}: {key}_file: {} is empty", path.display()));
                }
                Ok(Some(v.to_owned()))
            }
            (None, None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(anyhow!(
                    "{at}: {key}_env: the environment variable {var} is not set (or empty)"
                )),
            },
            _ => Err(anyhow!(
                "{at}: give only one of {key}, {key}_file and {key}_env"
            )),
        }
    }
}

/// The device name and password rules of `callfabric devices add`.
pub fn check_device_credentials(user: &str, password: &str) -> Result<()> {
    gateway::devices::check_username(user).map_err(|e| anyhow!("--user: {e}"))?;
    gateway::devices::check_password(password).map_err(|e| anyhow!("password: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Loaded;

    const GATEWAY: &str = "[node]\nname = \"a\"\n[gateway]\nudp = [\"127.0.0.1:5060\"]\nrealm = \"r\"\ndatabase = \"sqlite://x.db\"\n";

    /// Writes `text` (and `extra` files) into a fresh directory and reads it.
    fn load(text: &str, extra: &[(&str, &str)]) -> (tempfile::TempDir, anyhow::Result<Loaded>) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in extra {
            std::fs::write(dir.path().join(name), content).expect("write");
        }
        let p = dir.path().join("site.toml");
        std::fs::write(&p, text).expect("write");
        let l = Loaded::read(&p);
        (dir, l)
    }

    #[test]
    fn security_section_defaults_values_and_errors_with_lines() {
        let (_d, l) = load(GATEWAY, &[]);
        let s = l.expect("load").security().expect("defaults");
        assert_eq!(s, gateway::security::SecurityConfig::default());
        let (_d, l) = load(
            &format!(
                "{GATEWAY}[security]\nmax_failures_per_source = 3\nban_secs = 30\n\
                 challenges_per_sec = 5\nnever_ban = [\"192.0.2.1\"]\n"
            ),
            &[],
        );
        let s = l.expect("load").security().expect("valid");
        assert_eq!(s.max_failures_per_source, 3);
        assert_eq!(s.ban_time.as_secs(), 30);
        assert_eq!((s.challenges_per_sec, s.challenge_burst), (5, 10));
        assert_eq!(
            s.never_ban,
            ["192.0.2.1".parse::<std::net::IpAddr>().expect("ip")]
        );
        // Line 8 holds the bad value.
        let (_d, l) = load(
            &format!("{GATEWAY}[security]\nnever_ban = [\"nope\"]\n"),
            &[],
        );
        let e = l.expect("load").security().expect_err("bad ip").to_string();
        assert!(e.contains("site.toml:8") && e.contains("\"nope\""), "{e}");
        let (_d, l) = load(&format!("{GATEWAY}[security]\nban_secs = -1\n"), &[]);
        let e = l
            .expect("load")
            .security()
            .expect_err("bad secs")
            .to_string();
        assert!(e.contains("site.toml:8") && e.contains("ban_secs"), "{e}");
    }

    #[test]
    fn trunk_password_from_a_file_and_conflicts_named() {
        let trunk =
            "[[gateway.trunk]]\nname = \"itsp\"\naddress = \"192.0.2.1:5060\"\nusername = \"u\"\n";
        let (_d, l) = load(
            &format!("{GATEWAY}{trunk}password_file = \"itsp.secret\"\n"),
            &[("itsp.secret", "s3cret\n")],
        );
        let g = l.expect("load").gateway().expect("valid");
        let c = g.trunks[0].credentials.as_ref().expect("credentials");
        assert_eq!(c.password, "s3cret");
        let (_d, l) = load(
            &format!("{GATEWAY}{trunk}password = \"x\"\npassword_file = \"itsp.secret\"\n"),
            &[("itsp.secret", "s3cret\n")],
        );
        let e = l
            .expect("load")
            .gateway()
            .expect_err("two sources")
            .to_string();
        assert!(e.contains("give only one of password"), "{e}");
        let (_d, l) = load(
            &format!("{GATEWAY}{trunk}password_file = \"missing\"\n"),
            &[],
        );
        let e = l
            .expect("load")
            .gateway()
            .expect_err("missing file")
            .to_string();
        assert!(e.contains("password_file") && e.contains("missing"), "{e}");
    }
}
