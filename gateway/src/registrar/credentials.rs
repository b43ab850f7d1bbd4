//! The user store the registrar authenticates against.

use std::collections::HashMap;

use super::digest::{ha1, Algorithm};

/// What the registrar needs to know about a SIP user. Passwords are never stored, only
/// `HA1 = H(username ":" realm ":" password)` per algorithm, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// MD5 HA1 (32 hex digits); empty if the user may not use MD5.
    pub ha1_md5: String,
    /// SHA-256 HA1 (64 hex digits); empty if the user may not use SHA-256.
    pub ha1_sha256: String,
    /// The address-of-record this user may register, e.g. `sip:1000@example.com`.
    pub aor: String,
    /// Digest algorithms this user is challenged with, in order (empty: the registrar's
    /// default). For phones that read only the first challenge and only do MD5.
    pub algorithms: Vec<Algorithm>,
}

impl UserRecord {
    /// A record computed from a clear-text password (for provisioning and tests).
    pub fn from_password(username: &str, realm: &str, password: &str, aor: &str) -> Self {
        UserRecord {
            ha1_md5: ha1(Algorithm::Md5, username, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, username, realm, password),
            aor: aor.to_owned(),
            algorithms: Vec::new(),
        }
    }

    /// The stored HA1 for `alg` (may be empty).
    pub fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// A credential store (the SQL layer implements it; [`MemoryCredentials`] for tests).
pub trait Credentials {
    /// The record of `user` in `realm`, if any.
    fn lookup(&self, user: &str, realm: &str) -> Option<UserRecord>;
}

/// An in-memory [`Credentials`] store.
#[derive(Debug, Clone, Default)]
pub struct MemoryCredentials {
    users: HashMap<(String, String), UserRecord>,
}

impl MemoryCredentials {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a user.
    pub fn insert(&mut self, user: &str, realm: &str, record: UserRecord) {
        self.users
            .insert((user.to_owned(), realm.to_owned()), record);
    }

    /// Adds (or replaces) a user from a clear-text password.
    pub fn add_user(&mut self, user: &str, realm: &str, password: &str, aor: &str) {
        self.insert(
            user,
            realm,
            UserRecord::from_password(user, realm, password, aor),
        );
    }

    /// Removes a user.
    pub fn remove(&mut self, user: &str, realm: &str) -> Option<UserRecord> {
        self.users.remove(&(user.to_owned(), realm.to_owned()))
    }
}

impl Credentials for MemoryCredentials {
    fn lookup(&self, user: &str, realm: &str) -> Option<UserRecord> {
        self.users
            .get(&(user.to_owned(), realm.to_owned()))
            .cloned()
    }
}

impl<T: Credentials + ?Sized> Credentials for &T {
    fn lookup(&self, user: &str, realm: &str) -> Option<UserRecord> {
        (**self).lookup(user, realm)
    }
}
