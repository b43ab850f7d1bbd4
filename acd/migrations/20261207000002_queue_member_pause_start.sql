-- When a stored pause began (seconds since the Unix epoch; 0: unknown, for rows written before
-- this column), so that a pause's duration survives a restart.
ALTER TABLE queue_member_state ADD COLUMN paused_at BIGINT NOT NULL DEFAULT 0;
