-- The terminal a learner's page shows for a machine: a reloaded page reattaches to the same
-- shell instead of opening a new one.
CREATE TABLE machine_terminals (
    machine_id  TEXT PRIMARY KEY,
    terminal_id TEXT NOT NULL
);
CREATE INDEX machines_owner_exercise ON machines (owner, exercise, state);
