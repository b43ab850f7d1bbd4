//! The queue_log table in Asterisk's realtime layout (time, callid, queuename, agent, event,
//! data1…data5), in SQL via sqlx: SQLite (the file is created on first open) or PostgreSQL by
//! URL, usually the site's device database. The node writes rows off the call path.
//!
//! The ACD owns the table: its migrations (`acd/migrations/`) create it when absent and are
//! tracked in their own table, `_acd_migrations`, so that they and the gateway's migrations
//! (`_sqlx_migrations`) can share one database without either seeing the other's versions as
//! unknown. A database made before the split has the table from the gateway's migration and
//! keeps its rows.

use sqlstore::{AnyPool, DbError};
use sqlx::Row as _;

/// Errors of the queue_log store: the shared database errors, named as the queue_log's.
#[derive(Debug, thiserror::Error)]
#[error("queue_log {0}")]
pub struct QueueLogError(#[from] pub DbError);

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

impl sqlstore::Record for QueueLogRow {
    const INSERT: &'static str = "INSERT INTO queue_log \
        (time, callid, queuename, agent, event, data1, data2, data3, data4, data5) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    const SELECT: &'static str = "SELECT \
        time, callid, queuename, agent, event, data1, data2, data3, data4, data5 \
        FROM queue_log ORDER BY time";

    fn bind<'q>(&self, q: sqlstore::Insert<'q>) -> sqlstore::Insert<'q> {
        let q = (q.bind(self.time).bind(&self.callid).bind(&self.queuename))
            .bind(&self.agent)
            .bind(&self.event);
        (0..5).fold(q, |q, i| {
            q.bind(self.data.get(i).map_or("", String::as_str))
        })
    }

    fn from_row(r: &sqlstore::AnyRow) -> Result<Self, sqlx::Error> {
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
    }
}

/// The ACD's migrations, tracked in `_acd_migrations`.
pub(crate) fn migrator() -> sqlstore::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_acd_migrations");
    migrator
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
        let pool = sqlstore::open(url, 2, &migrator()).await?;
        Ok(QueueLogStore { pool })
    }

    /// The pool (shared with the member state table).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Stores one queue_log line.
    pub async fn insert(&self, q: &QueueLogRow) -> Result<(), QueueLogError> {
        Ok(sqlstore::insert(&self.pool, q).await?)
    }

    /// queue_log rows, oldest first.
    pub async fn rows(&self) -> Result<Vec<QueueLogRow>, QueueLogError> {
        Ok(sqlstore::all(&self.pool).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_log_round_trip_on_sqlite() {
        let enter = QueueLogRow {
            time: 100,
            callid: "acd-1".into(),
            queuename: "support".into(),
            agent: "NONE".into(),
            event: "ENTERQUEUE".into(),
            data: vec!["".into(), "1001".into(), "1".into()],
        };
        let connect = QueueLogRow {
            time: 103,
            agent: "PJSIP/2001".into(),
            event: "CONNECT".into(),
            data: ["3", "acd-1-2", "2", "x", "five"]
                .map(String::from)
                .to_vec(),
            ..enter.clone()
        };
        sqlstore::assert_round_trip(&migrator(), &[enter, connect]).await;
    }

    #[tokio::test]
    async fn unsupported_url_is_named() {
        let e = QueueLogStore::open("mysql://x").await.expect_err("mysql");
        assert!(e.to_string().contains("mysql://x"), "{e}");
    }
}
