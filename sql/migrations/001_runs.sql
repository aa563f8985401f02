-- clerk-sync migration 001: the tool's own state, in its own schema (never in public).
--   runs      one row per run: what ran, when, how it ended, its counts.
--   run_seen  the Clerk ids a run has listed so far (dedupe + deletion detection without
--             holding the whole list in memory); emptied when the run ends. UNLOGGED: it is
--             scratch space, cheap to write and not worth WAL.
CREATE SCHEMA IF NOT EXISTS clerk_sync;

CREATE TABLE IF NOT EXISTS clerk_sync.runs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command TEXT NOT NULL,
    dry_run BOOLEAN NOT NULL DEFAULT false,
    status TEXT NOT NULL,
    started_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    finished_at TIMESTAMP WITH TIME ZONE NULL,
    summary JSONB NULL
);

CREATE UNLOGGED TABLE IF NOT EXISTS clerk_sync.run_seen (
    run_id BIGINT NOT NULL,
    clerk_id TEXT NOT NULL,
    PRIMARY KEY (run_id, clerk_id)
);
