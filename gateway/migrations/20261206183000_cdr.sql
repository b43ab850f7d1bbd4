-- Call detail records (one per B2BUA call, written when it ends). Until the queue_log table
-- moved to the ACD (acd/migrations/), migration 20261127000002_records.sql created both tables;
-- databases that applied it keep them (IF NOT EXISTS here; the migrator ignores the version it no
-- longer ships).
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
