-- mod_pubsub_local_create -- Prosody 0.12 plugin for the callfabric test harness.
--
-- Stock mod_pubsub gives node-creation rights to server admins only, so an ordinary account
-- (a gateway or ACD node) cannot create `device_state` & co., and its publish to a missing node
-- fails with <forbidden/> even when autocreate_on_publish is on.
--
-- Loaded on the pubsub component (`modules_enabled = { "pubsub_local_create" }` inside the
-- Component section), this module wraps the service's affiliation lookup:
--   * an account of the local domain (pubsub.example.com -> example.com, or the option
--     `pubsub_local_domain`) is treated as 'owner' of any node that does not exist yet, which is
--     what the create and autocreate checks ask for; the creator then becomes the real owner;
--   * `pubsub_local_affiliation = "publisher"` (optional) gives local accounts that affiliation
--     on existing nodes where they have none recorded.
-- Remote and anonymous JIDs are left to the stock rules.

local jid_split = require "util.jid".split;

local pubsub = module:depends("pubsub");
local local_domain = module:get_option_string("pubsub_local_domain",
	module.host:match("^[^.]+%.(.+)$") or module.host);
local existing_aff = module:get_option_string("pubsub_local_affiliation", nil);

local service = pubsub.get_service();
local stock_get_affiliation = service.config.get_affiliation;

local function is_local(jid)
	local user, host = jid_split(jid);
	return user ~= nil and host == local_domain;
end

service.config.get_affiliation = function (jid, node, action)
	local aff = stock_get_affiliation(jid, node, action);
	if aff ~= nil or not is_local(jid) then
		return aff;
	end
	if node == nil or service.nodes[node] == nil then
		return "owner"; -- may create it
	end
	return existing_aff;
end

module:log("info", "accounts of %s may create nodes on %s (affiliation on existing nodes: %s)",
	local_domain, module.host, tostring(existing_aff));
