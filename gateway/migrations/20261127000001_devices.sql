-- Devices (phones and soft-phones) the gateway registers. Credentials are stored as HA1 per
-- digest algorithm (RFC 7616): H(username:realm:password), never the password itself.
CREATE TABLE IF NOT EXISTS devices (
    username     TEXT PRIMARY KEY,
    realm        TEXT NOT NULL,
    ha1_md5      TEXT NOT NULL,
    ha1_sha256   TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    site         TEXT NOT NULL DEFAULT '',
    extension    TEXT,
    call_limit   INTEGER NOT NULL DEFAULT 2
);
