-- clerk-sync 001: make uuid_generate_v4() available, as the users table's default needs it.
-- Supabase (and most Postgres installs) ship the uuid-ossp extension: use it. Builds without
-- it (some embedded servers) get a compatible function over the built-in gen_random_uuid().
-- Idempotent: does nothing when uuid_generate_v4() already resolves.
DO $$
BEGIN
    IF to_regprocedure('uuid_generate_v4()') IS NULL THEN
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp') THEN
            CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
        END IF;
    END IF;
    IF to_regprocedure('uuid_generate_v4()') IS NULL THEN
        CREATE FUNCTION public.uuid_generate_v4() RETURNS uuid
            LANGUAGE sql VOLATILE PARALLEL SAFE
            AS 'SELECT gen_random_uuid()';
        COMMENT ON FUNCTION public.uuid_generate_v4() IS
            'clerk-sync: stand-in for uuid-ossp''s uuid_generate_v4(), which this server lacks';
    END IF;
END
$$;
