//! SQL storage shared by the gateway (devices, registrations, CDRs, voicemail) and the ACD
//! (queue_log): one way to turn a `sqlite://` or `postgres://` URL into a migrated sqlx
//! [`AnyPool`], and to map the rows of a query. Each owner keeps its own tables and migrations
//! (`sqlx::migrate!` in its crate) and passes its [`Migrator`] to [`open`]; a SQLite file is
//! created readable by its owner only (HA1 is as good as a password for digest).

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
pub use sqlx::any::AnyRow;
pub use sqlx::migrate::Migrator;
pub use sqlx::AnyPool;

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not `sqlite:` or `postgres:`.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    Url(String),
    /// Connecting, migrating or querying failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The SQLite file could not be created.
    #[error("creating the database file {0}: {1}")]
    Create(String, std::io::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connects to `url` (`sqlite://path/to/file.db` creates the file, mode 0600; `postgres://…`)
/// with at most `max_connections`, and runs `migrator`.
///
/// **SQLite durability.** The file is put in WAL mode (`journal_mode=WAL`, persistent in the
/// file) and every connection runs `synchronous=FULL`: a commit appends the transaction to the
/// WAL and fsyncs it before it returns, so a committed transaction survives a process crash
/// (`kill -9`) *and* a power loss or OS crash. (WAL with `synchronous=NORMAL` would keep it
/// across a process crash only.) Compared with the rollback journal SQLite uses otherwise
/// (also FULL), a commit is one WAL append and one fsync instead of writing the old pages to a
/// journal file, syncing it, writing the database, syncing it and deleting the journal; and
/// readers do not block the writer. Should the switch fail (a read-only file), the store stays
/// in its journal mode, as durable, and says so in the log.
pub async fn open(
    url: &str,
    max_connections: u32,
    migrator: &Migrator,
) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let url = connect_url(url)?;
    let sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    use sqlx::Executor as _;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    if sqlite {
        match sqlx::query("PRAGMA journal_mode = WAL")
            .fetch_one(&pool)
            .await
            .and_then(|r| sqlx::Row::try_get::<String, _>(&r, 0))
        {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => {}
            Ok(mode) => tracing::warn!(mode, "SQLite stays in its journal mode (not WAL)"),
            Err(e) => tracing::warn!(error = %e, "SQLite stays in its journal mode (not WAL)"),
        }
    }
    migrator.run(&pool).await?;
    Ok(pool)
}

/// The URL sqlx connects with: a SQLite file is created (0600) and opened read-write-create.
fn connect_url(url: &str) -> Result<String, DbError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let (file, query) = path.split_once('?').unwrap_or((path, ""));
        create_private(file)?;
        Ok(if query.is_empty() {
            format!("sqlite://{file}?mode=rwc")
        } else {
            url.to_owned()
        })
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_owned())
    } else {
        Err(DbError::Url(url.to_owned()))
    }
}

/// The `sqlite://` URL of a file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A statement with its parameters (the INSERT of a [`Record`], bound by [`Record::bind`], or
/// a query for [`fetch`]).
pub type Insert<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// A row type stored in one table: how it is written and read back.
pub trait Record: Sized {
    /// `INSERT INTO table (…) VALUES ($1, …)`.
    const INSERT: &'static str;
    /// `SELECT … FROM table ORDER BY …`: every row, in the order they are read back.
    const SELECT: &'static str;
    /// Binds the INSERT's parameters, in order.
    fn bind<'q>(&self, q: Insert<'q>) -> Insert<'q>;
    /// One row of the SELECT.
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error>;
}

/// Stores one record.
pub async fn insert<R: Record>(pool: &AnyPool, r: &R) -> Result<(), DbError> {
    r.bind(sqlx::query(R::INSERT)).execute(pool).await?;
    Ok(())
}

/// Every record of `R`'s table, in [`Record::SELECT`]'s order.
pub async fn all<R: Record>(pool: &AnyPool) -> Result<Vec<R>, DbError> {
    select(pool, R::SELECT, R::from_row).await
}

/// Writes `rows` into a fresh SQLite database migrated by `migrator` and reads them back:
/// the round trip a [`Record`] implementation must pass.
///
/// # Panics
/// When a row does not come back as written (tests only).
#[cfg(feature = "test-util")]
#[allow(clippy::expect_used)]
pub async fn assert_round_trip<R>(migrator: &Migrator, rows: &[R])
where
    R: Record + PartialEq + std::fmt::Debug,
{
    let db = TempSqlite::new();
    let pool = open(db.url(), 1, migrator).await.expect("open");
    for r in rows {
        insert(&pool, r).await.expect("insert");
    }
    assert_eq!(all::<R>(&pool).await.expect("read back"), rows);
    // Opening again applies no migration twice and keeps the rows.
    pool.close().await;
    let again = open(db.url(), 1, migrator).await.expect("reopen");
    assert_eq!(all::<R>(&again).await.expect("read back").len(), rows.len());
}

/// A SQLite database file in a private temporary directory, removed on drop: for tests of
/// the stores built on this crate.
#[cfg(feature = "test-util")]
#[derive(Debug)]
pub struct TempSqlite {
    _dir: tempfile::TempDir,
    url: String,
}

#[cfg(feature = "test-util")]
impl TempSqlite {
    /// A new directory; the file is created by the first [`open`] of [`TempSqlite::url`].
    ///
    /// # Panics
    /// When no temporary directory can be made (tests only).
    #[allow(clippy::expect_used)]
    pub fn new() -> TempSqlite {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = sqlite_url(&dir.path().join("test.db"));
        TempSqlite { _dir: dir, url }
    }

    /// Its `sqlite://` URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(feature = "test-util")]
impl Default for TempSqlite {
    fn default() -> Self {
        TempSqlite::new()
    }
}

/// Runs `sql` (no parameters) and maps every row with `row`, in the order the query gives.
pub async fn select<T>(
    pool: &AnyPool,
    sql: &'static str,
    row: impl FnMut(&AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, DbError> {
    fetch(pool, sqlx::query(sql), row).await
}

/// Runs `query` (its parameters bound) and maps every row with `row`, in the order the query
/// gives.
pub async fn fetch<T>(
    pool: &AnyPool,
    query: Insert<'_>,
    row: impl FnMut(&AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, DbError> {
    let rows = query.fetch_all(pool).await?;
    Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
}

/// Creates the SQLite file `path` readable by its owner only (0600), if it does not exist;
/// SQLite gives its journal and WAL files the database file's mode. An existing file readable
/// by others is reported (not changed).
fn create_private(path: &str) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path,
                        mode = format!("{:o}", m.permissions().mode() & 0o777),
                        "the database file is readable by others: chmod 600 it"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(DbError::Create(path.to_owned(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row as _;

    #[test]
    fn urls_other_than_sqlite_and_postgres_are_named() {
        for bad in ["mysql://x", "sqlite:relative.db", "file.db"] {
            let e = connect_url(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(
            connect_url("postgres://u@h/db").expect("pg"),
            "postgres://u@h/db"
        );
        assert_eq!(
            connect_url("sqlite://:memory:").expect("memory"),
            "sqlite://:memory:?mode=rwc"
        );
    }

    #[tokio::test]
    async fn sqlite_file_is_private_migrated_and_rows_mapped_in_order() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let migrator = sqlx::migrate!("./tests/migrations");
        let pool = open(&sqlite_url(&file), 1, &migrator).await.expect("open");
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for (k, v) in [(2, "b"), (1, "a")] {
            sqlx::query("INSERT INTO kv (k, v) VALUES ($1, $2)")
                .bind(k)
                .bind(v)
                .execute(&pool)
                .await
                .expect("insert");
        }
        let rows = select(&pool, "SELECT k, v FROM kv ORDER BY k", |r| {
            Ok((r.try_get::<i64, _>("k")?, r.try_get::<String, _>("v")?))
        })
        .await
        .expect("select");
        assert_eq!(rows, vec![(1, "a".to_owned()), (2, "b".to_owned())]);
        // A column that is not there is an error, not a default.
        let e = select(&pool, "SELECT k FROM kv", |r| r.try_get::<String, _>("v"))
            .await
            .expect_err("missing column");
        assert!(matches!(e, DbError::Sql(_)), "{e}");
        // Opening again applies nothing twice.
        pool.close().await;
        open(&sqlite_url(&file), 1, &migrator)
            .await
            .expect("reopen");
    }

    /// Every connection of a SQLite pool runs in WAL mode with `synchronous=FULL` (a commit
    /// survives a power loss, not only `kill -9`), on a new file and on one reopened.
    #[tokio::test]
    async fn sqlite_connections_run_wal_with_synchronous_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("d.db");
        let migrator = sqlx::migrate!("./tests/migrations");
        for _ in 0..2 {
            let pool = open(&sqlite_url(&file), 3, &migrator).await.expect("open");
            let mut conns = Vec::new();
            for _ in 0..3 {
                conns.push(pool.acquire().await.expect("a connection"));
            }
            for c in &mut conns {
                let mode: String = sqlx::query("PRAGMA journal_mode")
                    .fetch_one(&mut **c)
                    .await
                    .expect("journal_mode")
                    .try_get(0)
                    .expect("text");
                let sync: i64 = sqlx::query("PRAGMA synchronous")
                    .fetch_one(&mut **c)
                    .await
                    .expect("synchronous")
                    .try_get(0)
                    .expect("integer");
                assert_eq!((mode.as_str(), sync), ("wal", 2), "0 OFF, 1 NORMAL, 2 FULL");
            }
            drop(conns);
            pool.close().await;
        }
    }
}
