-- clerk-sync migration 007: fewer requests per run.
--   instance  gains key_check: a salted SHA-256 of the API URL and the secret key of the last
--             run that confirmed (GET /v1/instance) the key belongs to the pinned instance, as
--             "salt:hexdigest". A Clerk key belongs to one instance for life, so a run with the
--             same key and URL skips that request; any other key is checked again. Never the
--             key itself; a re-pin clears it.
ALTER TABLE clerk_sync.instance ADD COLUMN IF NOT EXISTS key_check TEXT NULL;
