-- Check runs: a persistent queue (state queued → running → done/errored) whose rows stay
-- as history; webhooks to the LMS are delivered from here too, so both survive restarts.
CREATE TABLE check_runs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT, -- queue order
    id               TEXT NOT NULL UNIQUE,
    machine_id       TEXT NOT NULL,
    exercise         TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'errored')),
    trigger          TEXT NOT NULL DEFAULT 'api', -- api | live
    attempts         INTEGER NOT NULL DEFAULT 0,  -- times a worker claimed it
    report           TEXT,                        -- JSON, when done
    error            TEXT,                        -- why it errored
    created_at       INTEGER NOT NULL,            -- unix milliseconds
    started_at       INTEGER,
    finished_at      INTEGER,
    webhook_url      TEXT,
    webhook_state    TEXT CHECK (webhook_state IN ('pending', 'delivered', 'failed')),
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at  INTEGER,
    webhook_error    TEXT
);
CREATE INDEX check_runs_queue ON check_runs (state, seq);
CREATE INDEX check_runs_machine ON check_runs (machine_id, seq);
CREATE INDEX check_runs_webhooks ON check_runs (webhook_state, webhook_next_at);

-- Checks that passed once on a machine whose exercise says passed tasks stay passed.
CREATE TABLE check_sticky (
    machine_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    passed_at  INTEGER NOT NULL,
    PRIMARY KEY (machine_id, check_name)
);

-- The exercise a machine was created for, if any.
ALTER TABLE machines ADD COLUMN exercise TEXT;
