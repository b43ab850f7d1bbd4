-- Runs after 20261206183000_cdr.sql (the cdr table's own migration since queue_log moved to acd).
-- Issue 11 (reporting): the linked id of every CDR (Asterisk's linkedid: the uniqueid of the
-- first call of a chain, e.g. the caller's call into a queue; the agent's call carries the
-- same), and on the caller's row the agent device that answered it through an ACD.
ALTER TABLE cdr ADD COLUMN linkedid TEXT NOT NULL DEFAULT '';
ALTER TABLE cdr ADD COLUMN agent TEXT;
CREATE INDEX IF NOT EXISTS cdr_linkedid ON cdr (linkedid);
