-- Whom a run is for (its machine's owner, else the API key that made the machine): the
-- queue serves owners in turn, so one owner's many runs cannot starve another's one.
ALTER TABLE check_runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
-- The order in which runs were claimed; an owner's highest says when it was last served.
ALTER TABLE check_runs ADD COLUMN claim_seq INTEGER;
CREATE INDEX check_runs_owner_claims ON check_runs (owner, claim_seq);
CREATE INDEX check_runs_queued_owner ON check_runs (state, owner, seq);
