-- Issue 12 (true caller identity): the identity the caller presented (its first
-- P-Asserted-Identity, else its From user), beside src_device, the device it authenticated as
-- (a device may present only itself unless devices.present_any; trunks assert freely).
ALTER TABLE cdr ADD COLUMN presented TEXT NOT NULL DEFAULT '';
