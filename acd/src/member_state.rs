//! The `queue_member_state` table: the node's runtime member state (dynamic members, pauses
//! with their reason, penalties changed at run time), kept across a restart as Asterisk's
//! `persistentmembers` does. One set of rows per ACD node name, so that several nodes can
//! share one database; the node replaces its rows after every change and reads them back on
//! start. Same database and migrations as the queue_log (`_acd_migrations`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlstore::{AnyPool, DbError};
use sqlx::Row as _;

use crate::engine::{MemberConfig, RuntimeMember};

/// Errors of the member state store.
#[derive(Debug, thiserror::Error)]
#[error("queue_member_state {0}")]
pub struct MemberStateError(#[from] pub DbError);

impl From<sqlx::Error> for MemberStateError {
    fn from(e: sqlx::Error) -> Self {
        MemberStateError(DbError::Sql(e))
    }
}

/// The table, behind a connection pool.
#[derive(Debug, Clone)]
pub struct MemberStateStore {
    pool: AnyPool,
}

const INSERT: &str = "INSERT INTO queue_member_state \
    (node, queuename, interface, membername, state_interface, dynamic, penalty, paused, reason, \
     wrapuptime, ringinuse, paused_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

const SELECT: &str = "SELECT queuename, interface, membername, state_interface, dynamic, \
    penalty, paused, reason, wrapuptime, ringinuse, paused_at FROM queue_member_state \
    WHERE node = $1 ORDER BY queuename, interface";

/// Seconds since the Unix epoch.
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn from_row(r: &sqlstore::AnyRow, now: i64) -> Result<RuntimeMember, sqlx::Error> {
    let state_interface: String = r.try_get("state_interface")?;
    let paused: i64 = r.try_get("paused")?;
    let paused_at: i64 = r.try_get("paused_at")?;
    let wrapuptime: i64 = r.try_get("wrapuptime")?;
    let ringinuse: i64 = r.try_get("ringinuse")?;
    Ok(RuntimeMember {
        queue: r.try_get("queuename")?,
        member: MemberConfig {
            interface: r.try_get("interface")?,
            penalty: i32::try_from(r.try_get::<i64, _>("penalty")?).unwrap_or(0),
            name: Some(r.try_get("membername")?),
            state_interface: (!state_interface.is_empty()).then_some(state_interface),
            ringinuse: (ringinuse >= 0).then_some(ringinuse != 0),
            wrapuptime: u64::try_from(wrapuptime).ok(),
            paused: false,
        },
        dynamic: r.try_get::<i64, _>("dynamic")? != 0,
        paused: (paused != 0).then(|| r.try_get("reason")).transpose()?,
        // A start in the future (a clock set back) counts as now.
        paused_for: if paused != 0 && paused_at > 0 {
            Duration::from_secs(u64::try_from(now.saturating_sub(paused_at)).unwrap_or(0))
        } else {
            Duration::ZERO
        },
    })
}

impl MemberStateStore {
    /// Connects (`sqlite://…` creates the file; `postgres://…`) and creates the table if it is
    /// missing.
    pub async fn open(url: &str) -> Result<MemberStateStore, MemberStateError> {
        let pool = sqlstore::open(url, 2, &crate::queue_log::migrator()).await?;
        Ok(MemberStateStore { pool })
    }

    /// The table in the queue_log's database (same pool).
    pub fn new(queue_log: &crate::queue_log::QueueLogStore) -> MemberStateStore {
        MemberStateStore {
            pool: queue_log.pool().clone(),
        }
    }

    /// Replaces `node`'s rows with `rows`, in one transaction.
    pub async fn save(&self, node: &str, rows: &[RuntimeMember]) -> Result<(), MemberStateError> {
        let now = unix_secs(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM queue_member_state WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        for r in rows {
            let m = &r.member;
            sqlx::query(INSERT)
                .bind(node)
                .bind(&r.queue)
                .bind(&m.interface)
                .bind(m.name.as_deref().unwrap_or(&m.interface))
                .bind(m.state_interface.as_deref().unwrap_or(""))
                .bind(i64::from(r.dynamic))
                .bind(i64::from(m.penalty))
                .bind(i64::from(r.paused.is_some()))
                .bind(r.paused.as_deref().unwrap_or(""))
                .bind(
                    m.wrapuptime
                        .and_then(|w| i64::try_from(w).ok())
                        .unwrap_or(-1),
                )
                .bind(m.ringinuse.map_or(-1, i64::from))
                .bind(if r.paused.is_some() {
                    now.saturating_sub(i64::try_from(r.paused_for.as_secs()).unwrap_or(0))
                } else {
                    0
                })
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `node`'s rows, by queue then interface.
    pub async fn load(&self, node: &str) -> Result<Vec<RuntimeMember>, MemberStateError> {
        let now = unix_secs(SystemTime::now());
        Ok(
            sqlstore::fetch(&self.pool, sqlx::query(SELECT).bind(node), |r| {
                from_row(r, now)
            })
            .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn member_state_round_trip_on_sqlite_per_node() {
        let db = sqlstore::TempSqlite::new();
        let store = MemberStateStore::open(db.url()).await.expect("open");
        let mut alice = MemberConfig::new("PJSIP/2001");
        alice.name = Some("Alice".into());
        let paused = RuntimeMember {
            queue: "support".into(),
            member: alice,
            dynamic: false,
            paused: Some("Lunch".into()),
            paused_for: Duration::from_secs(90),
        };
        let mut d = MemberConfig::new("PJSIP/2003");
        d.name = Some("PJSIP/2003".into());
        d.state_interface = Some("custom:2003".into());
        d.penalty = 3;
        d.wrapuptime = Some(5);
        d.ringinuse = Some(false);
        let dynamic = RuntimeMember {
            member: d,
            dynamic: true,
            paused: None,
            paused_for: Duration::ZERO,
            ..paused.clone()
        };
        store
            .save("acd-a", &[paused.clone(), dynamic.clone()])
            .await
            .expect("save a");
        store
            .save("acd-b", std::slice::from_ref(&dynamic))
            .await
            .expect("save b");
        let mut back = store.load("acd-a").await.expect("load a");
        // The pause's start is kept, not its length: read back a moment later it is as long
        // or a second or two longer.
        let took = back[0].paused_for;
        assert!(
            took >= Duration::from_secs(90) && took <= Duration::from_secs(92),
            "{took:?}"
        );
        back[0].paused_for = paused.paused_for;
        assert_eq!(back, vec![paused.clone(), dynamic.clone()]);
        // A save replaces this node's rows only.
        store.save("acd-a", &[]).await.expect("save a empty");
        assert_eq!(store.load("acd-a").await.expect("load a"), vec![]);
        assert_eq!(store.load("acd-b").await.expect("load b"), vec![dynamic]);
        // Reopening applies no migration twice and keeps the rows.
        drop(store);
        let again = MemberStateStore::open(db.url()).await.expect("reopen");
        assert_eq!(again.load("acd-b").await.expect("load b").len(), 1);
    }
}
