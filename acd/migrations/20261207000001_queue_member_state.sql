-- Runtime member state kept across a restart (Asterisk's persistentmembers): per ACD node
-- (several may share one database), dynamic members and members whose pause or penalty
-- differs from the configuration. Flags are 0/1 and "none" is -1 (wrapuptime, ringinuse) so
-- that SQLite and PostgreSQL read the same types.
CREATE TABLE IF NOT EXISTS queue_member_state (
    node            TEXT NOT NULL,
    queuename       TEXT NOT NULL,
    interface       TEXT NOT NULL,
    membername      TEXT NOT NULL,
    state_interface TEXT NOT NULL DEFAULT '',
    dynamic         BIGINT NOT NULL,
    penalty         BIGINT NOT NULL,
    paused          BIGINT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    wrapuptime      BIGINT NOT NULL DEFAULT -1,
    ringinuse       BIGINT NOT NULL DEFAULT -1,
    PRIMARY KEY (node, queuename, interface)
);
