//! Durable registrations: the location service's bindings in the device database
//! (`registrations` table, SQLite or PostgreSQL), one row per contact, owned by the gateway node
//! that accepted it. The gateway writes an AOR's whole binding set whenever a REGISTER changed
//! it (group-committed; a mere refresh written behind within a second: see `server/durable.rs`)
//! and reads its own rows back on start, dropping
//! those past their absolute expiry.

use crate::devices::{DbError, DeviceStore};
use sqlx::Row;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One stored binding, transport-neutral (the server maps its `Peer` to and from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBinding {
    /// Canonical AOR.
    pub aor: String,
    /// Contact URI as registered.
    pub uri: String,
    /// Contact parameters other than `expires`.
    pub params: String,
    /// Absolute expiry.
    pub expires_at: SystemTime,
    /// Call-ID of the last REGISTER.
    pub call_id: String,
    /// CSeq of the last REGISTER.
    pub cseq: u32,
    /// `udp` or `tcp`.
    pub transport: String,
    /// Where the REGISTER came from.
    pub source: String,
    /// Our listener it arrived at.
    pub local: String,
}

/// Unix milliseconds of `t` (0 before the epoch, saturating).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The binding sets of several AORs, written in one transaction: each AOR's rows are replaced
/// by the given list (empty: the AOR has no binding any more).
pub type BindingBatch = Vec<(String, Vec<StoredBinding>)>;

/// Most AORs one `DELETE … aor IN (…)` names (one parameter each, plus the node).
pub const DELETE_CHUNK: usize = 500;

/// Most rows one multi-row `INSERT` writes (11 parameters each: 2,750 a statement, far below
/// SQLite's 32,766 and PostgreSQL's 65,535 bound parameters).
pub const INSERT_CHUNK: usize = 250;

/// The placeholders of one statement (or one SQLite script), in binding order: `?` on SQLite,
/// `$1, $2, …` on PostgreSQL. Not `$N` on SQLite: sqlx asks SQLite the name of each numbered
/// parameter to know which argument it takes, and SQLite finds it by a linear search of the
/// statement's parameter list, so binding a statement of n parameters costs O(n²) (a 250-row
/// `INSERT`: about 3 million steps; `sqlite3_bind_parameter_name` was 14 % of the gateway's
/// samples with refreshes written behind). Anonymous `?` have no name: sqlx binds them in
/// order, O(n), also across the statements of a script.
struct Marks {
    sqlite: bool,
    next: usize,
}

impl Marks {
    fn new(sqlite: bool) -> Self {
        Marks { sqlite, next: 1 }
    }

    /// `n` placeholders, comma-separated, appended to `sql`.
    fn push(&mut self, sql: &mut String, n: usize) {
        use std::fmt::Write as _;
        for i in 0..n {
            if i > 0 {
                sql.push_str(", ");
            }
            if self.sqlite {
                sql.push('?');
            } else {
                let _ = write!(sql, "${}", self.next);
            }
            self.next += 1;
        }
    }
}

/// `DELETE` of `n` AORs of a node: binds the node, then the AORs.
fn delete_sql(sql: &mut String, marks: &mut Marks, n: usize) {
    sql.push_str("DELETE FROM registrations WHERE node = ");
    marks.push(sql, 1);
    sql.push_str(" AND aor IN (");
    marks.push(sql, n);
    sql.push(')');
}

/// `INSERT` of `n` rows: binds each row's 11 columns ([`bind_row`]).
fn insert_sql(sql: &mut String, marks: &mut Marks, n: usize) {
    sql.push_str(
        "INSERT INTO registrations (node, aor, contact_key, uri, params, expires_at, call_id, \
         cseq, transport, source_addr, local_addr) VALUES ",
    );
    for r in 0..n {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        marks.push(sql, 11);
        sql.push(')');
    }
}

/// Binds a row's 11 columns, the node first.
fn bind_row<'q>(
    q: sqlstore::Insert<'q>,
    node: &'q str,
    aor: &'q str,
    b: &'q StoredBinding,
) -> sqlstore::Insert<'q> {
    q.bind(node)
        .bind(aor)
        .bind(super::location::contact_key(&b.uri))
        .bind(b.uri.as_str())
        .bind(b.params.as_str())
        .bind(unix_ms(b.expires_at))
        .bind(b.call_id.as_str())
        .bind(i64::from(b.cseq))
        .bind(b.transport.as_str())
        .bind(b.source.as_str())
        .bind(b.local.as_str())
}

impl DeviceStore {
    /// Replaces the stored bindings of each AOR in `batch` for `node`, in one transaction (one
    /// commit, one fsync on SQLite, however many REGISTERs it covers). The batch is written in
    /// a few statements: one `DELETE` per [`DELETE_CHUNK`] AORs, then one multi-row `INSERT`
    /// per [`INSERT_CHUNK`] rows. On SQLite a batch within one chunk of each (every batch
    /// but the largest) goes to SQLite's thread as one script, `BEGIN IMMEDIATE; DELETE …;
    /// INSERT …; COMMIT`: one round trip instead of four; should it fail, the connection is
    /// closed (SQLite rolls back what the script began), never returned to the pool inside a
    /// transaction. An AOR named twice in `batch` gets its last set, as if the sets were
    /// written one after the other.
    pub async fn save_bindings(&self, node: &str, batch: &BindingBatch) -> Result<(), DbError> {
        // The last set of each AOR (the writer's batches name each AOR once; be exact anyway).
        let mut last: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(batch.len());
        for (i, (aor, _)) in batch.iter().enumerate() {
            last.insert(aor.as_str(), i);
        }
        let sets: Vec<&(String, Vec<StoredBinding>)> = batch
            .iter()
            .enumerate()
            .filter(|(i, (aor, _))| last.get(aor.as_str()) == Some(i))
            .map(|(_, set)| set)
            .collect();
        let rows: Vec<(&str, &StoredBinding)> = sets
            .iter()
            .flat_map(|(aor, list)| list.iter().map(move |b| (aor.as_str(), b)))
            .collect();
        if sets.is_empty() {
            return Ok(());
        }
        if self.is_sqlite() && sets.len() <= DELETE_CHUNK && rows.len() <= INSERT_CHUNK {
            return self.save_in_one_script(node, &sets, &rows).await;
        }
        let sqlite = self.is_sqlite();
        let mut tx = self.pool().begin().await?;
        for chunk in sets.chunks(DELETE_CHUNK) {
            let mut sql = String::with_capacity(64 + chunk.len() * 6);
            delete_sql(&mut sql, &mut Marks::new(sqlite), chunk.len());
            // Built of placeholders only: no value is ever spliced into the text.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node);
            for (aor, _) in chunk {
                q = q.bind(aor.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut sql = String::with_capacity(160 + chunk.len() * 72);
            insert_sql(&mut sql, &mut Marks::new(sqlite), chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (aor, b) in chunk {
                q = bind_row(q, node, aor, b);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// SQLite, one chunk of each: the transaction as one script, one round trip to SQLite's
    /// thread. Its anonymous parameters are bound in order across the script (the node, the
    /// AORs, then each row's 11 columns; at most 1 + 500 + 2,750, below SQLite's 32,766 per
    /// statement).
    async fn save_in_one_script(
        &self,
        node: &str,
        sets: &[&(String, Vec<StoredBinding>)],
        rows: &[(&str, &StoredBinding)],
    ) -> Result<(), DbError> {
        let mut sql = String::with_capacity(256 + sets.len() * 6 + rows.len() * 72);
        sql.push_str("BEGIN IMMEDIATE; ");
        let mut marks = Marks::new(true);
        delete_sql(&mut sql, &mut marks, sets.len());
        if !rows.is_empty() {
            sql.push_str("; ");
            insert_sql(&mut sql, &mut marks, rows.len());
        }
        sql.push_str("; COMMIT");
        // Built of placeholders only: no value is ever spliced into the text.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node);
        for (aor, _) in sets {
            q = q.bind(aor.as_str());
        }
        for (aor, b) in rows {
            q = bind_row(q, node, aor, b);
        }
        let mut conn = self.pool().acquire().await?;
        match q.execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Wherever the script stopped, nothing of it stays: closing the connection
                // rolls back an open transaction (the pool opens a new one when needed).
                let _ = conn.close().await;
                Err(e.into())
            }
        }
    }

    /// `node`'s bindings still valid at `now` (oldest AOR first); rows already past their
    /// expiry are deleted.
    pub async fn load_bindings(
        &self,
        node: &str,
        now: SystemTime,
    ) -> Result<Vec<StoredBinding>, DbError> {
        let now_ms = unix_ms(now);
        sqlx::query("DELETE FROM registrations WHERE node = $1 AND expires_at <= $2")
            .bind(node)
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        let query = sqlx::query(
            "SELECT aor, uri, params, expires_at, call_id, cseq, transport, source_addr, local_addr \
             FROM registrations WHERE node = $1 ORDER BY aor, expires_at",
        )
        .bind(node);
        sqlstore::fetch(self.pool(), query, |r| {
            Ok(StoredBinding {
                aor: r.try_get("aor")?,
                uri: r.try_get("uri")?,
                params: r.try_get("params")?,
                expires_at: from_unix_ms(r.try_get("expires_at")?),
                call_id: r.try_get("call_id")?,
                cseq: u32::try_from(r.try_get::<i64, _>("cseq")?).unwrap_or(0),
                transport: r.try_get("transport")?,
                source: r.try_get("source_addr")?,
                local: r.try_get("local_addr")?,
            })
        })
        .await
    }
}
