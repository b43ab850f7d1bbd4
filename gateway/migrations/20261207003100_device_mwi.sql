-- Issue 14 (message waiting): the mailbox whose lamp a device shows ('' = <username>@default,
-- Asterisk's default) and how the device learns it: 'subscribe' (it SUBSCRIBEs to
-- message-summary), 'unsolicited' (a NOTIFY to its contacts after every registration and on
-- every change; SUBSCRIBE works too) or 'off'.
ALTER TABLE devices ADD COLUMN mailbox TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN mwi TEXT NOT NULL DEFAULT 'subscribe';
