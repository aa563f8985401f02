-- clerk-sync migration 002: one writer at a time, and resumable runs.
--   locks        at most one row per name; the holder refreshes heartbeat_at as it works. A
--                holder whose heartbeat is old, or whose process is gone, is stale and may be
--                taken over. Works through transaction poolers (no session advisory locks).
--   run_windows  the created_at windows a run walks and, for each, the last user id whose page
--                is committed: a crashed run resumes from there instead of starting over.
CREATE TABLE IF NOT EXISTS clerk_sync.locks (
    name TEXT PRIMARY KEY,
    run_id BIGINT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    heartbeat_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS clerk_sync.run_windows (
    run_id BIGINT NOT NULL,
    window_no INTEGER NOT NULL,
    created_after BIGINT NULL,
    created_before BIGINT NULL,
    cursor TEXT NULL,
    done BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, window_no)
);
