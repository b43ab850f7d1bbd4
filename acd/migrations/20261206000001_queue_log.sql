-- The queue_log table in Asterisk's realtime layout (time, callid, queuename, agent, event,
-- data1..data5), so the usual queue_log reporting tools can read it. Databases created before
-- the ACD had its own migrations already hold it (from the gateway's former
-- 20261127000002_records.sql): IF NOT EXISTS keeps it and its rows.
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
