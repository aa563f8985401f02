-- clerk-sync migration 006: real time (clerk-sync serve). Every way in (webhooks, backfill, diff,
-- sync, user --apply) writes a user only through the version gate kept here, so deliveries in
-- any order, and a walk that read a user before a webhook changed it, never go back in time.
--   user_versions   per Clerk user: Clerk's updated_at (ms) of the version last applied, and the
--                   tombstone (deleted_at) once Clerk said the user is deleted (a webhook, or a
--                   deletion a walk confirmed with Clerk). A tombstoned user is never written
--                   again. The users table itself keeps the app's columns only.
--   webhook_events  one row per verified delivery: its Svix message id, type, user, outcome and
--                   how long it took. A delivery that was answered 2xx claims its svix_id (the
--                   partial unique index), in the same transaction as its write: the same
--                   message delivered twice, also at the same moment, is applied once.
CREATE TABLE IF NOT EXISTS clerk_sync.user_versions (
    clerk_id TEXT PRIMARY KEY,
    clerk_updated_at BIGINT NULL,
    deleted_at TIMESTAMP WITH TIME ZONE NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS clerk_sync.webhook_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    svix_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    clerk_id TEXT NULL,
    outcome TEXT NOT NULL,
    claimed BOOLEAN NOT NULL,
    received_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    ms REAL NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS webhook_events_claimed
    ON clerk_sync.webhook_events (svix_id) WHERE claimed;
CREATE INDEX IF NOT EXISTS webhook_events_received ON clerk_sync.webhook_events (received_at);

COMMENT ON TABLE clerk_sync.user_versions IS 'clerk-sync: the Clerk version last applied per user, and tombstones';
COMMENT ON TABLE clerk_sync.webhook_events IS 'clerk-sync: verified webhook deliveries, once per svix-id';
