-- Registrations (RFC 3261 §10.3 bindings) that survive a restart: one row per contact, owned by
-- the gateway node that accepted it (several gateways may share one PostgreSQL). expires_at is
-- absolute (unix milliseconds): rows past it are dropped on start. source_* is where the
-- REGISTER came from (the NAT pinhole for UDP; for TCP the connection is gone after a restart).
CREATE TABLE IF NOT EXISTS registrations (
    node         TEXT NOT NULL,
    aor          TEXT NOT NULL,
    contact_key  TEXT NOT NULL,
    uri          TEXT NOT NULL,
    params       TEXT NOT NULL DEFAULT '',
    expires_at   BIGINT NOT NULL,
    call_id      TEXT NOT NULL,
    cseq         BIGINT NOT NULL,
    transport    TEXT NOT NULL,
    source_addr  TEXT NOT NULL,
    local_addr   TEXT NOT NULL,
    PRIMARY KEY (node, aor, contact_key)
);
