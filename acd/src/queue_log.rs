//! The queue_log table in Asterisk's realtime layout (time, callid, queuename, agent, event,
//! data1…data5), in SQL via sqlx: SQLite (the file is created on first open) or PostgreSQL by
//! URL, usually the site's device database. The node writes rows off the call path.
//!
//! The ACD owns the table: its migrations (`acd/migrations/`) create it when absent and are
//! tracked in their own table, `_acd_migrations`, so that they and the gateway's migrations
//! (`_sqlx_migrations`) can share one database without either seeing the other's versions as
//! unknown. A database made before the split has the table from the gateway's migration and
//! keeps its rows.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row as _};

/// Errors of the queue_log store.
#[derive(Debug, thiserror::Error)]
pub enum QueueLogError {
    /// Connecting or querying failed.
    #[error("queue_log database: {0}")]
    Sql(#[from] sqlx::Error),
    /// The URL is neither `sqlite://` nor `postgres://`.
    #[error("unsupported queue_log database URL {0:?}: use sqlite://PATH or postgres://…")]
    Url(String),
    /// Creating the table failed.
    #[error("queue_log table: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One queue_log line, split as Asterisk's realtime table stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueLogRow {
    /// UNIX seconds.
    pub time: i64,
    /// Call id.
    pub callid: String,
    /// Queue.
    pub queuename: String,
    /// Agent (member name) or `NONE`.
    pub agent: String,
    /// Event name.
    pub event: String,
    /// Up to five data fields.
    pub data: Vec<String>,
}

/// The queue_log table, behind a connection pool.
#[derive(Debug, Clone)]
pub struct QueueLogStore {
    pool: AnyPool,
}

impl QueueLogStore {
    /// Connects (`sqlite://path/to/file.db` creates the file; `postgres://…`) and creates the
    /// table if it is missing.
    pub async fn open(url: &str) -> Result<QueueLogStore, QueueLogError> {
        sqlx::any::install_default_drivers();
        let url = match url.split_once("://") {
            Some(("sqlite", rest)) if !rest.contains('?') => format!("{url}?mode=rwc"),
            Some(("sqlite" | "postgres" | "postgresql", _)) => url.to_owned(),
            _ => return Err(QueueLogError::Url(url.to_owned())),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.dangerous_set_table_name("_acd_migrations");
        migrator.run(&pool).await?;
        Ok(QueueLogStore { pool })
    }

    /// Stores one queue_log line.
    pub async fn insert(&self, q: &QueueLogRow) -> Result<(), QueueLogError> {
        let d = |i: usize| q.data.get(i).cloned().unwrap_or_default();
        sqlx::query(
            "INSERT INTO queue_log (time, callid, queuename, agent, event, data1, data2, data3, data4, data5) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(q.time)
        .bind(&q.callid)
        .bind(&q.queuename)
        .bind(&q.agent)
        .bind(&q.event)
        .bind(d(0))
        .bind(d(1))
        .bind(d(2))
        .bind(d(3))
        .bind(d(4))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// queue_log rows, oldest first.
    pub async fn rows(&self) -> Result<Vec<QueueLogRow>, QueueLogError> {
        let rows = sqlx::query(
            "SELECT time, callid, queuename, agent, event, data1, data2, data3, data4, data5 \
             FROM queue_log ORDER BY time",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let mut data = Vec::new();
                for c in ["data1", "data2", "data3", "data4", "data5"] {
                    data.push(r.try_get::<String, _>(c)?);
                }
                while data.last().is_some_and(String::is_empty) {
                    data.pop();
                }
                Ok(QueueLogRow {
                    time: r.try_get("time")?,
                    callid: r.try_get("callid")?,
                    queuename: r.try_get("queuename")?,
                    agent: r.try_get("agent")?,
                    event: r.try_get("event")?,
                    data,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(QueueLogError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_log_round_trip_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let store = QueueLogStore::open(&url).await.expect("open");
        let q = QueueLogRow {
            time: 100,
            callid: "acd-1".into(),
            queuename: "support".into(),
            agent: "NONE".into(),
            event: "ENTERQUEUE".into(),
            data: vec!["".into(), "1001".into(), "1".into()],
        };
        store.insert(&q).await.expect("insert");
        assert_eq!(store.rows().await.expect("read"), vec![q]);
        // Opening again runs nothing twice and keeps the rows.
        let again = QueueLogStore::open(&url).await.expect("reopen");
        assert_eq!(again.rows().await.expect("read").len(), 1);
    }

    #[tokio::test]
    async fn unsupported_url_is_named() {
        let e = QueueLogStore::open("mysql://x").await.expect_err("mysql");
        assert!(e.to_string().contains("mysql://x"), "{e}");
    }
}
