-- Voicemail messages (issue 14): one row per message; the audio is a WAV file under the
-- voicemail directory (`path`, relative to it). folder: 'new' (unheard) or 'old'. Several
-- gateways may share one PostgreSQL: a central voicemail server serves every site.
CREATE TABLE IF NOT EXISTS voicemail_messages (
    id           TEXT PRIMARY KEY,
    mailbox      TEXT NOT NULL,
    context      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    caller       TEXT NOT NULL DEFAULT '',
    received_at  BIGINT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    urgent       INTEGER NOT NULL DEFAULT 0,
    path         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS voicemail_messages_box ON voicemail_messages (mailbox, context, received_at);
