-- Per-device digest algorithms (comma-separated RFC 8760 tokens, e.g. 'MD5'), challenged in
-- that order instead of the gateway's default; empty = the default. For legacy phones that read
-- only the first WWW-Authenticate and only compute MD5.
ALTER TABLE devices ADD COLUMN digest_algorithms TEXT NOT NULL DEFAULT '';
