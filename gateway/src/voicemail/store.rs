//! Mailboxes: message metadata in SQL (the device database's migrations: SQLite by default,
//! PostgreSQL for a central voicemail server), the audio as WAV files under one directory:
//! `<dir>/<context>/<mailbox>/<id>.wav` (8 kHz mono 16-bit PCM) and `greeting.wav`.

use crate::devices::{DbError, DeviceStore};
use media::audio::{self, WavEncoding};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id (also the file name).
    pub id: String,
    /// Unheard.
    pub new: bool,
    /// Caller (From user).
    pub caller: String,
    /// Unix seconds.
    pub received_at: i64,
    /// Length.
    pub duration: Duration,
    /// The WAV file.
    pub path: PathBuf,
}

/// Errors of the mailbox store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A file.
    #[error("voicemail file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// WAV encoding/decoding.
    #[error("voicemail audio: {0}")]
    Audio(#[from] audio::AudioError),
    /// The mailbox holds its maximum of messages.
    #[error("mailbox {0} is full")]
    Full(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(DbError::Sql(e))
    }
}

/// Messages and greetings of every mailbox.
#[derive(Debug, Clone)]
pub struct MailboxStore {
    db: DeviceStore,
    dir: PathBuf,
    context: String,
    max_messages: usize,
}

impl MailboxStore {
    /// Opens (and migrates) the database at `url` and creates `dir`.
    pub async fn open(
        url: &str,
        dir: &Path,
        context: &str,
        max_messages: usize,
    ) -> Result<MailboxStore, StoreError> {
        let db = DeviceStore::open(url).await?;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        Ok(MailboxStore {
            db,
            dir: dir.to_path_buf(),
            context: context.to_owned(),
            max_messages,
        })
    }

    /// The voicemail context (`default`).
    pub fn context(&self) -> &str {
        &self.context
    }

    fn box_dir(&self, mailbox: &str) -> PathBuf {
        self.dir.join(&self.context).join(mailbox)
    }

    /// The owner's recorded greeting, if any.
    pub fn greeting_path(&self, mailbox: &str) -> PathBuf {
        self.box_dir(mailbox).join("greeting.wav")
    }

    /// (new, old) counts.
    pub async fn counts(&self, mailbox: &str) -> Result<(u32, u32), StoreError> {
        let rows = sqlx::query(
            "SELECT folder, COUNT(*) AS n FROM voicemail_messages WHERE mailbox = $1 AND context = $2 GROUP BY folder",
        )
        .bind(mailbox)
        .bind(&self.context)
        .fetch_all(self.db.pool())
        .await?;
        let (mut new, mut old) = (0u32, 0u32);
        for r in rows {
            let folder: String = r.try_get("folder")?;
            let n = u32::try_from(r.try_get::<i64, _>("n")?).unwrap_or(u32::MAX);
            if folder == "new" {
                new = n;
            } else {
                old = n;
            }
        }
        Ok((new, old))
    }

    /// The mailbox's messages: new ones first, each folder oldest first.
    pub async fn list(&self, mailbox: &str) -> Result<Vec<Message>, StoreError> {
        let query = sqlx::query(
            "SELECT id, folder, caller, received_at, duration_ms, path FROM voicemail_messages \
             WHERE mailbox = $1 AND context = $2 ORDER BY received_at, id",
        )
        .bind(mailbox)
        .bind(&self.context);
        let mut v = sqlstore::fetch(self.db.pool(), query, |r| {
            Ok(Message {
                id: r.try_get("id")?,
                new: r.try_get::<String, _>("folder")? == "new",
                caller: r.try_get("caller")?,
                received_at: r.try_get("received_at")?,
                duration: Duration::from_millis(
                    u64::try_from(r.try_get::<i64, _>("duration_ms")?).unwrap_or(0),
                ),
                path: self.dir.join(r.try_get::<String, _>("path")?),
            })
        })
        .await?;
        v.sort_by_key(|m| !m.new);
        Ok(v)
    }

    /// Stores a new message (the file first, then its row); returns it.
    pub async fn deposit(
        &self,
        mailbox: &str,
        caller: &str,
        samples: &[i16],
    ) -> Result<Message, StoreError> {
        let (new, old) = self.counts(mailbox).await?;
        if (new + old) as usize >= self.max_messages {
            return Err(StoreError::Full(mailbox.to_owned()));
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("{}-{:08x}", now.as_millis(), rand::random::<u32>());
        let dir = self.box_dir(mailbox);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io(dir.clone(), e))?;
        let rel = Path::new(&self.context)
            .join(mailbox)
            .join(format!("{id}.wav"));
        let path = self.dir.join(&rel);
        audio::wav::write_wav(&path, samples, WavEncoding::Pcm16)?;
        let duration =
            Duration::from_millis(samples.len() as u64 * 1000 / u64::from(audio::SAMPLE_RATE));
        let received_at = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO voicemail_messages (id, mailbox, context, folder, caller, received_at, duration_ms, urgent, path) \
             VALUES ($1, $2, $3, 'new', $4, $5, $6, 0, $7)",
        )
        .bind(&id)
        .bind(mailbox)
        .bind(&self.context)
        .bind(caller)
        .bind(received_at)
        .bind(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
        .bind(rel.to_string_lossy().into_owned())
        .execute(self.db.pool())
        .await?;
        Ok(Message {
            id,
            new: true,
            caller: caller.to_owned(),
            received_at,
            duration,
            path,
        })
    }

    /// Moves a message to the old folder (heard).
    pub async fn mark_old(&self, mailbox: &str, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE voicemail_messages SET folder = 'old' WHERE id = $1 AND mailbox = $2 AND context = $3",
        )
        .bind(id)
        .bind(mailbox)
        .bind(&self.context)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Deletes a message (its row, then its file).
    pub async fn delete(&self, mailbox: &str, id: &str) -> Result<(), StoreError> {
        let row = sqlx::query(
            "SELECT path FROM voicemail_messages WHERE id = $1 AND mailbox = $2 AND context = $3",
        )
        .bind(id)
        .bind(mailbox)
        .bind(&self.context)
        .fetch_optional(self.db.pool())
        .await?;
        sqlx::query(
            "DELETE FROM voicemail_messages WHERE id = $1 AND mailbox = $2 AND context = $3",
        )
        .bind(id)
        .bind(mailbox)
        .bind(&self.context)
        .execute(self.db.pool())
        .await?;
        if let Some(r) = row {
            let path = self.dir.join(r.try_get::<String, _>("path")?);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(StoreError::Io(path, e));
                }
            }
        }
        Ok(())
    }

    /// Saves the owner's greeting.
    pub fn save_greeting(&self, mailbox: &str, samples: &[i16]) -> Result<(), StoreError> {
        let dir = self.box_dir(mailbox);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io(dir.clone(), e))?;
        audio::wav::write_wav(&self.greeting_path(mailbox), samples, WavEncoding::Pcm16)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_are_listed_new_first_with_their_rows_and_files() {
        let db = sqlstore::TempSqlite::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MailboxStore::open(db.url(), dir.path(), "default", 10)
            .await
            .expect("open");
        let first = store
            .deposit("1001", "2001", &[0; 8000])
            .await
            .expect("first");
        let second = store
            .deposit("1001", "2002", &[0; 4000])
            .await
            .expect("second");
        store.mark_old("1001", &first.id).await.expect("heard");
        let listed = store.list("1001").await.expect("list");
        let old_first = Message {
            new: false,
            ..first
        };
        assert_eq!(listed, [second, old_first], "new first, then old");
        assert_eq!(listed[0].duration, Duration::from_millis(500));
        assert!(listed.iter().all(|m| m.path.is_file()));
        assert_eq!(store.counts("1001").await.expect("counts"), (1, 1));
        assert!(store.list("1002").await.expect("other box").is_empty());
    }
}
