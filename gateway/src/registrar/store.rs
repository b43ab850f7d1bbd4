//! Durable registrations: the location service's bindings in the device database
//! (`registrations` table, SQLite or PostgreSQL), one row per contact, owned by the gateway node
//! that accepted it. The gateway writes an AOR's whole binding set whenever a REGISTER changed
//! it (group-committed; see `server/durable.rs`) and reads its own rows back on start, dropping
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

impl DeviceStore {
    /// Replaces the stored bindings of each AOR in `batch` for `node`, in one transaction (one
    /// commit, one fsync on SQLite, however many REGISTERs it covers).
    pub async fn save_bindings(&self, node: &str, batch: &BindingBatch) -> Result<(), DbError> {
        let mut tx = self.pool().begin().await?;
        for (aor, rows) in batch {
            sqlx::query("DELETE FROM registrations WHERE node = $1 AND aor = $2")
                .bind(node)
                .bind(aor)
                .execute(&mut *tx)
                .await?;
            for b in rows {
                sqlx::query(
                    "INSERT INTO registrations (node, aor, contact_key, uri, params, expires_at, \
                     call_id, cseq, transport, source_addr, local_addr) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(node)
                .bind(aor)
                .bind(super::location::contact_key(&b.uri))
                .bind(&b.uri)
                .bind(&b.params)
                .bind(unix_ms(b.expires_at))
                .bind(&b.call_id)
                .bind(i64::from(b.cseq))
                .bind(&b.transport)
                .bind(&b.source)
                .bind(&b.local)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
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
