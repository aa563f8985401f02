-- clerk-sync migration 004: mark clerk-sync's own objects as its own, so that they can always be
-- told apart from the app's (`clerk-sync doctor` reads these comments).
COMMENT ON SCHEMA clerk_sync IS 'clerk-sync: its own bookkeeping (runs, lock, checkpoints, pin)';
COMMENT ON TABLE clerk_sync.runs IS 'clerk-sync: one row per run';
COMMENT ON TABLE clerk_sync.run_seen IS 'clerk-sync: scratch, the Clerk ids a run has listed';
COMMENT ON TABLE clerk_sync.locks IS 'clerk-sync: the one writer lock';
COMMENT ON TABLE clerk_sync.run_windows IS 'clerk-sync: checkpoints of resumable runs';
COMMENT ON TABLE clerk_sync.instance IS 'clerk-sync: the Clerk instance pinned to the table';
