-- Issue 13 (supervisors): a device whose supervisor flag is 1 may listen to, whisper to and
-- barge into calls (feature codes and the admin API), like the devices [supervisors] lists.
ALTER TABLE devices ADD COLUMN supervisor INTEGER NOT NULL DEFAULT 0;
