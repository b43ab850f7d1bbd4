-- Prosody 0.12 for the two-site fabric (copy to /etc/prosody/prosody.cfg.lua).
-- Certificates: certs.sh (certs/fabric.example.com.{crt,key}).
-- Accounts: prosodyctl adduser gw-a@fabric.example.com (gw-b, acd-1, acd-2 likewise).
pidfile = "/run/prosody/prosody.pid"
plugin_paths = { "/usr/local/lib/callfabric/prosody-plugins" } -- tigase-config/prosody-plugins
c2s_ports = { 5222 }
modules_disabled = { "s2s" }
storage = "sql"
sql = { driver = "SQLite3", database = "prosody.sqlite" }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix" }
authentication = "internal_hashed"
c2s_require_encryption = true
ssl = {
	certificate = "/etc/prosody/certs/fabric.example.com.crt";
	key         = "/etc/prosody/certs/fabric.example.com.key";
}
log = { info = "/var/log/prosody/prosody.log"; error = "*syslog" }

VirtualHost "fabric.example.com"

Component "pubsub.fabric.example.com" "pubsub"
	pubsub_max_items = 10000        -- one item per device; Prosody's default is 256
	expose_publisher = true
	-- fabric members may create the fabric's nodes (stock 0.12: only admins)
	modules_enabled = { "pubsub_local_create" }
