//! `[fabric]`: the secret fabric members sign their SIP to each other with
//! (`sip_core::trust`, docs/SECURITY.md "Fabric trust").

use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::sync::Arc;

use super::Loaded;

/// `[fabric]`: `secret`, `secret_file` (relative to the config file) or `secret_env`; every
/// member of one fabric has the same one (at least 16 bytes).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FabricSection {
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    /// How far a signature's time may be from ours (seconds, default 30).
    pub max_skew_secs: Option<u64>,
}

impl Loaded {
    /// The fabric key, if `[fabric]` names a secret.
    pub fn fabric_key(&self) -> Result<Option<Arc<sip_core::trust::FabricKey>>> {
        let Some(f) = &self.config.fabric else {
            return Ok(None);
        };
        let Some(secret) = self.secret(
            &self.at("fabric", "secret"),
            "secret",
            f.secret.as_ref(),
            f.secret_file.as_ref(),
            f.secret_env.as_ref(),
        )?
        else {
            return Err(anyhow!(
                "{}: [fabric] needs secret, secret_file or secret_env",
                self.at("fabric", "secret")
            ));
        };
        let mut key =
            sip_core::trust::FabricKey::new(secret.trim().as_bytes(), &self.config.node.name)
                .ok_or_else(|| {
                    anyhow!(
                    "{}: the fabric secret must be at least {} bytes (e.g. `openssl rand -hex 32`)",
                    self.at("fabric", "secret"),
                    sip_core::trust::MIN_SECRET
                )
                })?;
        match f.max_skew_secs {
            None => {}
            Some(s) if (1..=3600).contains(&s) => key.max_skew_secs = s,
            Some(s) => {
                return Err(anyhow!(
                    "{}: max_skew_secs = {s} is not between 1 and 3600",
                    self.at("fabric", "max_skew_secs")
                ))
            }
        }
        Ok(Some(Arc::new(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Loaded;

    fn load(text: &str, key_file: Option<&str>) -> anyhow::Result<Loaded> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("gw.toml");
        std::fs::write(&p, text)?;
        if let Some(k) = key_file {
            std::fs::write(dir.path().join("fabric.key"), k)?;
        }
        // The directory must outlive the read of a secret_file: keep it.
        let l = Loaded::read(&p);
        std::mem::forget(dir);
        l
    }

    #[test]
    fn fabric_secrets_are_checked_and_errors_name_file_and_line() {
        let base = "[node]\nname = \"gw-a\"\n\n[fabric]\n";
        let err = |text: &str, key: Option<&str>| {
            load(&format!("{base}{text}"), key)
                .and_then(|l| l.fabric_key())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err("secret = \"short\"\n", None);
        assert!(
            e.contains("gw.toml:5:") && e.contains("at least 16 bytes"),
            "{e}"
        );
        let e = err("secret_file = \"missing.key\"\n", None);
        assert!(e.contains("gw.toml:") && e.contains("cannot read"), "{e}");
        let e = err("secret = \"0123456789abcdef\"\nmax_skew_secs = 0\n", None);
        assert!(
            e.contains("gw.toml:6:") && e.contains("max_skew_secs"),
            "{e}"
        );
        let e = err("max_skew_secs = 10\n", None);
        assert!(e.contains("needs secret"), "{e}");
        let k = load(
            &format!("{base}secret_file = \"fabric.key\"\n"),
            Some("0123456789abcdef0123\n"),
        )
        .and_then(|l| l.fabric_key())
        .expect("a key")
        .expect("some key");
        assert_eq!((k.name.as_str(), k.max_skew_secs), ("gw-a", 30));
        let none = load("[node]\nname = \"x\"\n", None).and_then(|l| l.fabric_key());
        assert!(none.expect("no section").is_none());
    }
}
