//! Call detail records, in the device database (SQLite or PostgreSQL, same migrations). Written
//! off the call path: a failed write is logged and the call is not affected. (The queue_log
//! table is the ACD's: `acd::queue_log`.)

use sqlx::Row as _;

use crate::devices::{DbError, DeviceStore};

/// One call detail record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cdr {
    /// Unique id (node, process, call number).
    pub uniqueid: String,
    /// Linked id (Asterisk's `linkedid`): the uniqueid of the first call of the chain (the
    /// caller's call into a queue; the agent's call has the same), else its own uniqueid.
    pub linkedid: String,
    /// On a caller's row: the agent device that answered the call through an ACD.
    pub agent: Option<String>,
    /// Node that handled the call.
    pub node: String,
    /// UNIX seconds of the INVITE.
    pub start_time: i64,
    /// UNIX seconds of the answer.
    pub answer_time: Option<i64>,
    /// UNIX seconds of the end.
    pub end_time: i64,
    /// Caller (user part).
    pub src: String,
    /// Number dialled.
    pub dst: String,
    /// Calling device.
    pub src_device: Option<String>,
    /// Called device.
    pub dst_device: Option<String>,
    /// The identity the caller presented (first P-Asserted-Identity, else From user); the
    /// device it authenticated as is `src_device`.
    pub presented: String,
    /// `ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED` (Asterisk's dispositions).
    pub disposition: String,
    /// Why it ended (`bye-a`, `486`, `media-timeout`, …).
    pub reason: String,
    /// Seconds from INVITE to end.
    pub duration: i64,
    /// Seconds from answer to end.
    pub billsec: i64,
    /// RTP packets received from the caller / the callee.
    pub rtp_in_a: i64,
    /// RTP packets received from the callee.
    pub rtp_in_b: i64,
    /// RFC 3550 packets lost, caller side / callee side.
    pub lost_a: i64,
    /// Lost on the callee side.
    pub lost_b: i64,
    /// RFC 3550 jitter, microseconds, caller side / callee side.
    pub jitter_a_us: i64,
    /// Jitter on the callee side.
    pub jitter_b_us: i64,
}

impl sqlstore::Record for Cdr {
    const INSERT: &'static str = "INSERT INTO cdr \
        (uniqueid, node, start_time, answer_time, end_time, src, dst, src_device, dst_device, \
        disposition, reason, duration, billsec, rtp_in_a, rtp_in_b, lost_a, lost_b, jitter_a_us, \
        jitter_b_us, linkedid, agent, presented) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
        $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)";
    const SELECT: &'static str = "SELECT \
        uniqueid, node, start_time, answer_time, end_time, src, dst, src_device, dst_device, \
        disposition, reason, duration, billsec, rtp_in_a, rtp_in_b, lost_a, lost_b, jitter_a_us, \
        jitter_b_us, linkedid, agent, presented FROM cdr ORDER BY end_time, uniqueid";

    fn bind<'q>(&self, q: sqlstore::Insert<'q>) -> sqlstore::Insert<'q> {
        q.bind(&self.uniqueid)
            .bind(&self.node)
            .bind(self.start_time)
            .bind(self.answer_time)
            .bind(self.end_time)
            .bind(&self.src)
            .bind(&self.dst)
            .bind(&self.src_device)
            .bind(&self.dst_device)
            .bind(&self.disposition)
            .bind(&self.reason)
            .bind(self.duration)
            .bind(self.billsec)
            .bind(self.rtp_in_a)
            .bind(self.rtp_in_b)
            .bind(self.lost_a)
            .bind(self.lost_b)
            .bind(self.jitter_a_us)
            .bind(self.jitter_b_us)
            .bind(&self.linkedid)
            .bind(&self.agent)
            .bind(&self.presented)
    }

    fn from_row(r: &sqlstore::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Cdr {
            uniqueid: r.try_get("uniqueid")?,
            linkedid: r.try_get("linkedid")?,
            agent: r.try_get("agent")?,
            presented: r.try_get("presented")?,
            node: r.try_get("node")?,
            start_time: r.try_get("start_time")?,
            answer_time: r.try_get("answer_time")?,
            end_time: r.try_get("end_time")?,
            src: r.try_get("src")?,
            dst: r.try_get("dst")?,
            src_device: r.try_get("src_device")?,
            dst_device: r.try_get("dst_device")?,
            disposition: r.try_get("disposition")?,
            reason: r.try_get("reason")?,
            duration: r.try_get("duration")?,
            billsec: r.try_get("billsec")?,
            rtp_in_a: r.try_get("rtp_in_a")?,
            rtp_in_b: r.try_get("rtp_in_b")?,
            lost_a: r.try_get("lost_a")?,
            lost_b: r.try_get("lost_b")?,
            jitter_a_us: r.try_get("jitter_a_us")?,
            jitter_b_us: r.try_get("jitter_b_us")?,
        })
    }
}

impl DeviceStore {
    /// Stores one CDR.
    pub async fn insert_cdr(&self, c: &Cdr) -> Result<(), DbError> {
        sqlstore::insert(self.pool(), c).await
    }

    /// CDRs, oldest first.
    pub async fn cdrs(&self) -> Result<Vec<Cdr>, DbError> {
        sqlstore::all(self.pool()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cdr_round_trip_on_sqlite() {
        let cdr = Cdr {
            uniqueid: "gw-a-1-7".into(),
            linkedid: "gw-a-1-5".into(),
            agent: Some("PJSIP/2001".into()),
            node: "gw-a".into(),
            start_time: 100,
            answer_time: Some(103),
            end_time: 160,
            src: "1001".into(),
            dst: "800".into(),
            src_device: Some("PJSIP/1001".into()),
            dst_device: None,
            presented: "+15551001".into(),
            disposition: "ANSWERED".into(),
            reason: "bye-a".into(),
            duration: 60,
            billsec: 57,
            rtp_in_a: 2850,
            rtp_in_b: 2849,
            lost_a: 1,
            lost_b: 0,
            jitter_a_us: 1500,
            jitter_b_us: 900,
        };
        let unanswered = Cdr {
            uniqueid: "gw-a-1-8".into(),
            linkedid: "gw-a-1-8".into(),
            agent: None,
            answer_time: None,
            end_time: 170,
            disposition: "NO ANSWER".into(),
            ..cdr.clone()
        };
        sqlstore::assert_round_trip(&crate::devices::migrator(), &[cdr, unanswered]).await;
    }
}
