-- Per-key quota overrides (`rnr apikey create --max-machines N --creations-per-minute N`);
-- NULL: the platform's defaults ([quotas] in the configuration).
ALTER TABLE api_keys ADD COLUMN max_machines INTEGER;
ALTER TABLE api_keys ADD COLUMN creations_per_minute INTEGER;
-- The client address a machine was created for (anonymous learners are capped per address).
ALTER TABLE machines ADD COLUMN client_addr TEXT;
-- What the quota checks count inside the insert: a key's live machines and its recent
-- creations, an address's live machines.
CREATE INDEX machines_key_created ON machines (api_key_id, created_at);
CREATE INDEX machines_client_state ON machines (client_addr, state);
