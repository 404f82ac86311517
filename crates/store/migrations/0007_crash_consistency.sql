-- How far a machine's creation got, written before each step begins and after the last:
-- reserved (its row, nothing in the driver yet) → driver_creating (the driver may hold
-- parts of it) → driver_created (the driver's machine is whole; an exercise's setup may
-- still be running) → ready. After a restart only ready machines are adopted; the others
-- are half-built and removed. Machines from before this column were adopted whole.
ALTER TABLE machines ADD COLUMN creation_step TEXT NOT NULL DEFAULT 'reserved'
    CHECK (creation_step IN ('reserved', 'driver_creating', 'driver_created', 'ready'));
UPDATE machines SET creation_step = 'ready';
-- When a delete was asked for (by a request or the reaper), before the driver is told: a
-- delete a crash or a timeout interrupted is carried out by the next start or reaper pass.
ALTER TABLE machines ADD COLUMN delete_requested_at INTEGER;

-- A check run that could not be carried out waits until then before a worker takes it
-- again (unix milliseconds; 0: at once).
ALTER TABLE check_runs ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
