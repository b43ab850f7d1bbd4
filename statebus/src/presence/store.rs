//! Persisted subscriptions: a text file, one `<contact node> <subscriber bare JID>` a line,
//! rewritten whole (temporary file + rename) after a change, so a restart keeps every
//! supervisor's subscriptions and a crash mid-write leaves the previous file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Subscriptions: contact node (e.g. `1000`) → subscribers' bare JIDs.
pub type Subscriptions = BTreeMap<String, BTreeSet<String>>;

const HEADER: &str = "# callfabric presence subscriptions v1: <contact node> <subscriber bare JID>";

/// A store file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// the file
        path: PathBuf,
        /// what failed
        err: std::io::Error,
    },
    /// A line is not `<node> <jid>`.
    #[error("{path}:{line}: {what}")]
    Syntax {
        /// the file
        path: PathBuf,
        /// 1-based line number
        line: usize,
        /// what is wrong
        what: String,
    },
}

/// Parse the file's text (sans-IO).
pub fn parse(path: &Path, text: &str) -> Result<Subscriptions, StoreError> {
    let mut subs = Subscriptions::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let err = |what: &str| StoreError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            what: what.to_string(),
        };
        let mut parts = l.split_whitespace();
        let (Some(node), Some(jid), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("expected `<contact node> <subscriber bare JID>`"));
        };
        match jid.parse::<tokio_xmpp::jid::BareJid>() {
            Ok(j) if j.to_string() == jid => {}
            Ok(_) => return Err(err(&format!("{jid:?} is not a normalised bare JID"))),
            Err(e) => return Err(err(&format!("{jid:?}: {e}"))),
        }
        subs.entry(node.to_string())
            .or_default()
            .insert(jid.to_string());
    }
    Ok(subs)
}

/// The file's text (sans-IO).
pub fn format(subs: &Subscriptions) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for (node, jids) in subs {
        for j in jids {
            out.push_str(node);
            out.push(' ');
            out.push_str(j);
            out.push('\n');
        }
    }
    out
}

/// Read the store; a missing file is an empty store.
pub fn load(path: &Path) -> Result<Subscriptions, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Subscriptions::new()),
        Err(err) => Err(StoreError::Io {
            path: path.to_path_buf(),
            err,
        }),
    }
}

/// Write the store atomically (temporary file in the same directory, fsync, rename).
pub fn save(path: &Path, text: &str) -> Result<(), StoreError> {
    use std::io::Write as _;
    let io = |err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let p = Path::new("subs.txt");
        let mut s = Subscriptions::new();
        s.entry("1000".into())
            .or_default()
            .insert("boss@fabric.test".into());
        s.entry("1000".into())
            .or_default()
            .insert("lead@fabric.test".into());
        assert_eq!(parse(p, &format(&s)).expect("parses"), s);
        let e = parse(p, "# x\n1000 boss@fabric.test\n1000\n")
            .expect_err("a line without a JID")
            .to_string();
        assert!(e.starts_with("subs.txt:3: expected"), "{e}");
        let e = parse(p, "1000 boss@fabric.test/phone\n")
            .expect_err("a full JID")
            .to_string();
        assert!(e.contains("subs.txt:1:"), "{e}");
    }
}
