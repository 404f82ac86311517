-- Machines ever created; rows are kept after deletion as history.
CREATE TABLE machines (
    id          TEXT PRIMARY KEY,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('creating', 'running', 'failed', 'deleted')),
    address     TEXT,
    hostname    TEXT NOT NULL,
    memory_mib  INTEGER NOT NULL,
    cpu_millis  INTEGER NOT NULL,
    pids        INTEGER NOT NULL,
    outbound    INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    api_key_id  TEXT,
    error       TEXT,
    created_at  INTEGER NOT NULL, -- unix milliseconds
    expires_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);
CREATE INDEX machines_state_expiry ON machines (state, expires_at);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE, -- sha256 of the whole key; the key itself is never stored
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
