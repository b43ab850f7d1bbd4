-- Issue 12 (true caller identity): a device's INVITEs must present its own identity (From and
-- P-Asserted-Identity naming its user name or extension) unless present_any is 1 (a
-- receptionist or a soft-switch behind a device account allowed to present others).
ALTER TABLE devices ADD COLUMN present_any INTEGER NOT NULL DEFAULT 0;
