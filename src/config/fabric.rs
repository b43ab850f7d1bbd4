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
