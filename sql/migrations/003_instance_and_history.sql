-- clerk-sync migration 003: which Clerk instance filled the table, and run history fit for cron.
--   instance  at most one row: the Clerk instance (GET /v1/instance) whose users fill the table,
--             pinned by the first writing run. A run with a key of another instance refuses.
--   runs      gains the instance each run read, where it ran (host, pid: a run left 'running'
--             by a dead process is reported as crashed), and the watermark: the newest
--             updated_at (ms) a run has fully written, where the next `sync` stops reading.
CREATE TABLE IF NOT EXISTS clerk_sync.instance (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    instance_id TEXT NOT NULL,
    environment_type TEXT NULL,
    pinned_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    pinned_by_run BIGINT NULL
);

ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS instance_id TEXT NULL;
ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS environment_type TEXT NULL;
ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS host TEXT NULL;
ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS pid INTEGER NULL;
ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS watermark_ms BIGINT NULL;
