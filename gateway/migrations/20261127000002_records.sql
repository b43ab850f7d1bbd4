-- Call detail records (one per B2BUA call, written when it ends) and the queue_log table in
-- Asterisk's realtime layout (time, callid, queuename, agent, event, data1..data5), so the
-- usual queue_log reporting tools can read it.
CREATE TABLE IF NOT EXISTS cdr (
    uniqueid     TEXT PRIMARY KEY,
    node         TEXT NOT NULL,
    start_time   BIGINT NOT NULL,
    answer_time  BIGINT,
    end_time     BIGINT NOT NULL,
    src          TEXT NOT NULL,
    dst          TEXT NOT NULL,
    src_device   TEXT,
    dst_device   TEXT,
    disposition  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    duration     BIGINT NOT NULL,
    billsec      BIGINT NOT NULL,
    rtp_in_a     BIGINT NOT NULL,
    rtp_in_b     BIGINT NOT NULL,
    lost_a       BIGINT NOT NULL,
    lost_b       BIGINT NOT NULL,
    jitter_a_us  BIGINT NOT NULL,
    jitter_b_us  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS queue_log (
    time      BIGINT NOT NULL,
    callid    TEXT NOT NULL,
    queuename TEXT NOT NULL,
    agent     TEXT NOT NULL,
    event     TEXT NOT NULL,
    data1     TEXT NOT NULL DEFAULT '',
    data2     TEXT NOT NULL DEFAULT '',
    data3     TEXT NOT NULL DEFAULT '',
    data4     TEXT NOT NULL DEFAULT '',
    data5     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS queue_log_time ON queue_log (time);
