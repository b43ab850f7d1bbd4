//! Devices in SQL (sqlx): SQLite by default (a file, created and migrated on first start),
//! PostgreSQL by URL for multi-site. The gateway serves from an in-memory [`DeviceCache`] that a
//! reloader refreshes periodically, so edits in the database take effect within one reload
//! interval, and an unreachable database costs nothing but freshness: the last loaded cache keeps
//! serving and the outage is logged loudly and exposed.

use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tracing::{error, info};

/// One device row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Digest username (also the AOR user part).
    pub username: String,
    /// Digest realm.
    pub realm: String,
    /// `MD5(username:realm:password)`, lowercase hex.
    pub ha1_md5: String,
    /// `SHA-256(username:realm:password)`, lowercase hex.
    pub ha1_sha256: String,
    /// Display name.
    pub display_name: String,
    /// Site the device belongs to: only that site's gateway publishes its state (a table
    /// shared by several sites). Empty: every gateway that reads it (a single-site table).
    pub site: String,
    /// Extension number routed to this device, if any.
    pub extension: Option<String>,
    /// Simultaneous calls before the device reads BUSY.
    pub call_limit: i64,
    /// Digest algorithms to challenge this device with, comma-separated (`MD5`); empty: the
    /// gateway's default.
    pub digest_algorithms: String,
    /// Whether the device may present identities other than its own (From,
    /// P-Asserted-Identity); otherwise a foreign one gets 403.
    pub present_any: bool,
    /// The mailbox whose message-waiting lamp the device shows (`1001@default`); empty:
    /// `<username>@default` ([`DeviceRecord::mailbox_key`]).
    pub mailbox: String,
    /// How the device learns it: `subscribe`, `unsolicited` or `off` ([`MwiMode`]).
    pub mwi: String,
    /// Whether the device may listen to, whisper to and barge into calls (as if listed in
    /// `[supervisors] devices`); read from the cache on every spy request.
    pub supervisor: bool,
}

/// How a device learns its mailbox's message-waiting state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MwiMode {
    /// It SUBSCRIBEs to `message-summary` (the default).
    Subscribe,
    /// NOTIFYs to its registered contacts after every registration and on every change, as
    /// well as its subscriptions.
    Unsolicited,
    /// No message waiting (SUBSCRIBE refused).
    Off,
}

impl MwiMode {
    /// Reads `subscribe`, `unsolicited`, `off` (ASCII case-insensitive; empty: subscribe).
    pub fn parse(s: &str) -> Option<MwiMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "subscribe" => Some(MwiMode::Subscribe),
            "unsolicited" => Some(MwiMode::Unsolicited),
            "off" | "no" => Some(MwiMode::Off),
            _ => None,
        }
    }
}

impl DeviceRecord {
    /// The mailbox key: `mailbox`, or `<username>@default`.
    pub fn mailbox_key(&self) -> String {
        if self.mailbox.trim().is_empty() {
            format!("{}@default", self.username)
        } else {
            self.mailbox.trim().to_owned()
        }
    }

    /// The MWI mode (an unreadable value reads as `subscribe`).
    pub fn mwi_mode(&self) -> MwiMode {
        MwiMode::parse(&self.mwi).unwrap_or(MwiMode::Subscribe)
    }
}

impl DeviceRecord {
    /// A record with credentials derived from a clear-text password (stored as HA1 only).
    pub fn with_password(username: &str, realm: &str, password: &str) -> Self {
        DeviceRecord {
            username: username.into(),
            realm: realm.into(),
            ha1_md5: ha1_md5(username, realm, password),
            ha1_sha256: ha1_sha256(username, realm, password),
            display_name: String::new(),
            site: String::new(),
            extension: None,
            call_limit: 2,
            digest_algorithms: String::new(),
            present_any: false,
            mailbox: String::new(),
            mwi: "subscribe".into(),
            supervisor: false,
        }
    }
}

impl DeviceRecord {
    /// Whether the gateway of `site` publishes this device's state: it is of that site, or
    /// of none (a row written before sites were recorded, a single-site table), or the
    /// gateway names no site.
    pub fn of_site(&self, site: &str) -> bool {
        self.site.is_empty() || site.is_empty() || self.site == site
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `MD5(user:realm:password)` as lowercase hex.
pub fn ha1_md5(user: &str, realm: &str, password: &str) -> String {
    hex(&md5::compute(format!("{user}:{realm}:{password}")).0)
}

/// `SHA-256(user:realm:password)` as lowercase hex.
pub fn ha1_sha256(user: &str, realm: &str, password: &str) -> String {
    hex(&Sha256::digest(
        format!("{user}:{realm}:{password}").as_bytes(),
    ))
}

/// A user name or password that cannot be provisioned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Empty user name.
    #[error("the user name is empty")]
    EmptyUser,
    /// Over 64 bytes.
    #[error("the user name is longer than 64 bytes")]
    LongUser,
    /// A character a SIP user part or a digest `username` cannot carry as is.
    #[error(
        "the user name contains {0:?}: use letters, digits and - _ . ! ~ * ' ( ) & = + $ , ; ? /"
    )]
    UserChar(char),
    /// Empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// A control character (a pasted newline, an escape sequence).
    #[error("the password contains a control character")]
    PasswordControl,
}

/// A user name must be 1–64 bytes of RFC 3261 `unreserved` / `user-unreserved` characters
/// (no space, no control character, no `@`, `:` or quote: it goes into AORs, digest
/// `username="…"` and log lines as is).
pub fn check_username(user: &str) -> Result<(), CredentialError> {
    if user.is_empty() {
        return Err(CredentialError::EmptyUser);
    }
    if user.len() > 64 {
        return Err(CredentialError::LongUser);
    }
    match user
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(*c)))
    {
        Some(c) => Err(CredentialError::UserChar(c)),
        None => Ok(()),
    }
}

/// A password must not be empty nor hold control characters.
pub fn check_password(password: &str) -> Result<(), CredentialError> {
    if password.is_empty() {
        return Err(CredentialError::EmptyPassword);
    }
    if password.chars().any(char::is_control) {
        return Err(CredentialError::PasswordControl);
    }
    Ok(())
}

/// Database errors (shared with the ACD's queue_log store).
pub use sqlstore::DbError;

/// The gateway's migrations (devices, registrations, CDRs, voicemail). A database migrated
/// before the queue_log table moved to the ACD has applied 20261127000002_records.sql, which
/// this set no longer holds.
pub(crate) fn migrator() -> sqlstore::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// The device table, behind a connection pool.
#[derive(Debug, Clone)]
pub struct DeviceStore {
    pool: AnyPool,
    /// A SQLite file (not PostgreSQL).
    sqlite: bool,
}

impl DeviceStore {
    /// Connect (`sqlite://path/to/file.db` creates the file; `postgres://…`) and migrate.
    pub async fn open(url: &str) -> Result<DeviceStore, DbError> {
        let pool = sqlstore::open(url, 4, &migrator()).await?;
        Ok(DeviceStore {
            pool,
            sqlite: url.starts_with("sqlite:"),
        })
    }

    /// Every device.
    pub async fn load_all(&self) -> Result<Vec<DeviceRecord>, DbError> {
        let sql = "SELECT username, realm, ha1_md5, ha1_sha256, display_name, site, extension, call_limit, \
                   digest_algorithms, present_any, mailbox, mwi, supervisor FROM devices ORDER BY username";
        sqlstore::select(&self.pool, sql, |r| {
            Ok(DeviceRecord {
                username: r.try_get("username")?,
                realm: r.try_get("realm")?,
                ha1_md5: r.try_get("ha1_md5")?,
                ha1_sha256: r.try_get("ha1_sha256")?,
                display_name: r.try_get("display_name")?,
                site: r.try_get("site")?,
                extension: r.try_get("extension")?,
                call_limit: r.try_get("call_limit")?,
                digest_algorithms: r.try_get("digest_algorithms")?,
                present_any: r.try_get::<i64, _>("present_any")? != 0,
                mailbox: r.try_get("mailbox")?,
                mwi: r.try_get("mwi")?,
                supervisor: r.try_get::<i64, _>("supervisor")? != 0,
            })
        })
        .await
    }

    /// Insert or replace one device.
    pub async fn upsert(&self, d: &DeviceRecord) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO devices (username, realm, ha1_md5, ha1_sha256, display_name, site, extension, call_limit, digest_algorithms, present_any, mailbox, mwi, supervisor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (username) DO UPDATE SET realm = excluded.realm, ha1_md5 = excluded.ha1_md5, \
             ha1_sha256 = excluded.ha1_sha256, display_name = excluded.display_name, site = excluded.site, \
             extension = excluded.extension, call_limit = excluded.call_limit, \
             digest_algorithms = excluded.digest_algorithms, present_any = excluded.present_any, \
             mailbox = excluded.mailbox, mwi = excluded.mwi, supervisor = excluded.supervisor",
        )
        .bind(&d.username)
        .bind(&d.realm)
        .bind(&d.ha1_md5)
        .bind(&d.ha1_sha256)
        .bind(&d.display_name)
        .bind(&d.site)
        .bind(&d.extension)
        .bind(d.call_limit)
        .bind(&d.digest_algorithms)
        .bind(i64::from(d.present_any))
        .bind(&d.mailbox)
        .bind(if d.mwi.is_empty() { "subscribe" } else { d.mwi.as_str() })
        .bind(i64::from(d.supervisor))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Delete one device; false if there was none.
    pub async fn delete(&self, username: &str) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM devices WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// On SQLite (not PostgreSQL).
    pub(crate) fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// Close the pool (further queries fail).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[derive(Debug, Default)]
struct CacheState {
    devices: HashMap<String, DeviceRecord>,
    healthy: bool,
    loaded_at: Option<SystemTime>,
    last_error: Option<String>,
}

/// What the gateway serves from. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DeviceCache {
    inner: Arc<RwLock<CacheState>>,
}

/// The outcome of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Loaded; how many devices were added, changed, removed.
    Loaded {
        /// new usernames
        added: usize,
        /// changed rows
        changed: usize,
        /// usernames gone
        removed: usize,
    },
    /// The database failed; the previous cache is kept.
    Failed(String),
}

impl DeviceCache {
    /// An empty cache (unhealthy until the first successful load).
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The device with this username.
    pub fn get(&self, username: &str) -> Option<DeviceRecord> {
        self.read().devices.get(username).cloned()
    }

    /// The device an extension routes to.
    pub fn by_extension(&self, ext: &str) -> Option<DeviceRecord> {
        self.read()
            .devices
            .values()
            .find(|d| d.extension.as_deref() == Some(ext))
            .cloned()
    }

    /// The usernames of every device.
    pub fn usernames(&self) -> Vec<String> {
        self.read().devices.keys().cloned().collect()
    }

    /// The usernames of the devices the gateway of `site` publishes (see
    /// [`DeviceRecord::of_site`]).
    pub fn usernames_of_site(&self, site: &str) -> Vec<String> {
        self.read()
            .devices
            .values()
            .filter(|d| d.of_site(site))
            .map(|d| d.username.clone())
            .collect()
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    /// Whether no device is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the last reload reached the database.
    pub fn healthy(&self) -> bool {
        self.read().healthy
    }

    /// The last database error, while unhealthy.
    pub fn last_error(&self) -> Option<String> {
        self.read().last_error.clone()
    }

    /// When the cache was last loaded successfully.
    pub fn loaded_at(&self) -> Option<SystemTime> {
        self.read().loaded_at
    }

    /// Load everything from `store`; on failure keep serving the previous contents.
    pub async fn reload(&self, store: &DeviceStore) -> Reload {
        match store.load_all().await {
            Ok(rows) => {
                let fresh: HashMap<String, DeviceRecord> =
                    rows.into_iter().map(|d| (d.username.clone(), d)).collect();
                let mut st = self.inner.write().unwrap_or_else(|p| p.into_inner());
                let added = fresh
                    .keys()
                    .filter(|k| !st.devices.contains_key(*k))
                    .count();
                let removed = st
                    .devices
                    .keys()
                    .filter(|k| !fresh.contains_key(*k))
                    .count();
                let changed = fresh
                    .iter()
                    .filter(|(k, v)| st.devices.get(*k).is_some_and(|old| old != *v))
                    .count();
                if !st.healthy && st.loaded_at.is_some() {
                    info!("device database reachable again");
                }
                st.devices = fresh;
                st.healthy = true;
                st.loaded_at = Some(SystemTime::now());
                st.last_error = None;
                Reload::Loaded {
                    added,
                    changed,
                    removed,
                }
            }
            Err(e) => {
                let mut st = self.inner.write().unwrap_or_else(|p| p.into_inner());
                if st.healthy || st.loaded_at.is_none() {
                    error!(
                        error = %e,
                        devices = st.devices.len(),
                        "DEVICE DATABASE UNREACHABLE: serving the last loaded cache until it comes back"
                    );
                }
                st.healthy = false;
                st.last_error = Some(e.to_string());
                Reload::Failed(e.to_string())
            }
        }
    }

    /// Reload every `interval` until the returned handle is aborted (needs a tokio runtime).
    pub fn spawn_reloader(
        &self,
        store: DeviceStore,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                cache.reload(&store).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_publishes_only_its_sites_devices() {
        let mut d = DeviceRecord::with_password("1001", "r", "p");
        assert!(d.of_site("paris"), "a device of no site is every gateway's");
        d.site = "paris".into();
        assert!(d.of_site("paris"));
        assert!(!d.of_site("lyon"));
        assert!(d.of_site(""), "a gateway of no site publishes every device");
        let cache = DeviceCache::new();
        let mut lyon = DeviceRecord::with_password("2001", "r", "p");
        lyon.site = "lyon".into();
        cache.inner.write().unwrap().devices = [d, lyon]
            .into_iter()
            .map(|d| (d.username.clone(), d))
            .collect();
        assert_eq!(cache.usernames_of_site("paris"), vec!["1001".to_string()]);
        assert_eq!(cache.usernames_of_site("lyon"), vec!["2001".to_string()]);
    }

    // RFC 7616 §3.9.1's credentials; expected values from coreutils md5sum/sha256sum.
    #[test]
    fn user_names_and_passwords_are_checked() {
        assert_eq!(check_username("1000"), Ok(()));
        assert_eq!(check_username("alice.smith-2"), Ok(()));
        assert_eq!(check_username(""), Err(CredentialError::EmptyUser));
        assert_eq!(check_username("10 00"), Err(CredentialError::UserChar(' ')));
        assert_eq!(check_username("a\tb"), Err(CredentialError::UserChar('\t')));
        assert_eq!(check_username("a@b"), Err(CredentialError::UserChar('@')));
        assert_eq!(
            check_username(&"x".repeat(65)),
            Err(CredentialError::LongUser)
        );
        assert_eq!(check_password("s3cret with spaces"), Ok(()));
        assert_eq!(check_password(""), Err(CredentialError::EmptyPassword));
        assert_eq!(
            check_password("abc\n"),
            Err(CredentialError::PasswordControl)
        );
    }

    #[test]
    fn ha1_known_answers() {
        assert_eq!(
            ha1_md5("Mufasa", "http-auth@example.org", "Circle of Life"),
            "3d78807defe7de2157e2b0b6573a855f"
        );
        assert_eq!(
            ha1_sha256("Mufasa", "http-auth@example.org", "Circle of Life"),
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
    }
}
