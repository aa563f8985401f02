-- clerk-sync migration 005: the lock is a lease, and "its process is gone" only where that can
-- be known.
--   locks  gains token: random per acquisition. The heartbeat, the check before each commit
--          and the release go by it (run_id is for display and resume), so a run that resumes
--          a crashed run never shares its lease, and a takeover replaces exactly the holder
--          it saw. boot_id and pid_ns (with host and pid): where the holder's pid means
--          something; only a holder on this host, boot and PID namespace can be known gone.
--   runs   gains boot_id and pid_ns too, for `status` to tell a crashed run the same way.
ALTER TABLE clerk_sync.locks ADD COLUMN IF NOT EXISTS token TEXT NULL;
ALTER TABLE clerk_sync.locks ADD COLUMN IF NOT EXISTS boot_id TEXT NULL;
ALTER TABLE clerk_sync.locks ADD COLUMN IF NOT EXISTS pid_ns TEXT NULL;
ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS boot_id TEXT NULL;
ALTER TABLE clerk_sync.runs ADD COLUMN IF NOT EXISTS pid_ns TEXT NULL;
COMMENT ON COLUMN clerk_sync.locks.token IS 'clerk-sync: the lease, random per acquisition';
COMMENT ON COLUMN clerk_sync.locks.boot_id IS 'clerk-sync: the holder''s /proc/sys/kernel/random/boot_id';
COMMENT ON COLUMN clerk_sync.locks.pid_ns IS 'clerk-sync: the holder''s PID namespace';
COMMENT ON COLUMN clerk_sync.runs.boot_id IS 'clerk-sync: the run''s /proc/sys/kernel/random/boot_id';
COMMENT ON COLUMN clerk_sync.runs.pid_ns IS 'clerk-sync: the run''s PID namespace';
