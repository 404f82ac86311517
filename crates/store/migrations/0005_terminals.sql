-- Terminals ever opened: the machine each belongs to (its recordings are deleted with the
-- machine) and whether `DELETE /api/v1/terminals/{id}` revoked its tokens.
CREATE TABLE terminals (
    id          TEXT PRIMARY KEY,
    machine_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL, -- unix milliseconds
    revoked_at  INTEGER
);
CREATE INDEX terminals_machine ON terminals (machine_id);
