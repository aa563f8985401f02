-- clerk-sync: the integration guide's app schema, for a project that has none yet.
--
-- Created only as a set, and only when the users table does not exist: on a project that
-- already has one, this script changes nothing at all (no table, column, function, trigger or
-- extension), whatever names the app's own objects have. `clerk-sync init-db` and
-- `clerk-sync doctor` then say what they found instead.
--
--   uuid_generate_v4()  uuid-ossp's when the server has it, else a stand-in over the built-in
--                       gen_random_uuid(); the users table's default needs it.
--   users               exactly as the guide defines it.
--   settings            one monitoring-settings row per user, made by the AFTER INSERT trigger
--                       (idempotent: ON CONFLICT; SECURITY DEFINER, so a role that may only
--                       insert users still gets the row).
--   updated_at          kept current by a BEFORE UPDATE trigger.
--   row-level security  on for both tables, with no policy (see below).
-- Every object created here carries a COMMENT starting with 'clerk-sync', so it can be told
-- apart from the app's later.
DO $guide$
BEGIN
    IF to_regclass(@users_lit@) IS NOT NULL THEN
        RAISE NOTICE 'clerk-sync: % exists; the app schema is left exactly as it is', @users_lit@;
        RETURN;
    END IF;
    IF to_regclass(@settings_lit@) IS NOT NULL THEN
        RAISE EXCEPTION 'clerk-sync: % exists but % does not; not creating half of the set',
            @settings_lit@, @users_lit@;
    END IF;

    IF to_regprocedure('uuid_generate_v4()') IS NULL THEN
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp') THEN
            CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
        ELSE
            CREATE FUNCTION @schema@.uuid_generate_v4() RETURNS uuid
                LANGUAGE sql VOLATILE PARALLEL SAFE
                AS 'SELECT gen_random_uuid()';
            COMMENT ON FUNCTION @schema@.uuid_generate_v4() IS
                'clerk-sync: stand-in for uuid-ossp''s uuid_generate_v4(), which this server lacks';
        END IF;
    END IF;

    CREATE TABLE @users@ (
        id UUID NOT NULL DEFAULT uuid_generate_v4(),
        clerk_id VARCHAR(255) NOT NULL,
        email VARCHAR(255) NULL,
        first_name VARCHAR(100) NULL,
        last_name VARCHAR(100) NULL,
        profile_image_url VARCHAR(500) NULL,
        is_active BOOLEAN NULL DEFAULT true,
        created_at TIMESTAMP WITH TIME ZONE NULL DEFAULT NOW(),
        updated_at TIMESTAMP WITH TIME ZONE NULL DEFAULT NOW(),
        CONSTRAINT users_pkey PRIMARY KEY (id),
        CONSTRAINT users_clerk_id_key UNIQUE (clerk_id)
    );
    COMMENT ON TABLE @users@ IS 'clerk-sync: the integration guide''s users table';

    CREATE TABLE @settings@ (
        id UUID NOT NULL DEFAULT uuid_generate_v4(),
        user_id UUID NOT NULL,
        monitoring_enabled BOOLEAN NOT NULL DEFAULT true,
        email_notifications BOOLEAN NOT NULL DEFAULT true,
        alert_frequency VARCHAR(20) NOT NULL DEFAULT 'daily',
        created_at TIMESTAMP WITH TIME ZONE NULL DEFAULT NOW(),
        updated_at TIMESTAMP WITH TIME ZONE NULL DEFAULT NOW(),
        CONSTRAINT user_monitoring_settings_pkey PRIMARY KEY (id),
        CONSTRAINT user_monitoring_settings_user_id_key UNIQUE (user_id),
        CONSTRAINT user_monitoring_settings_user_id_fkey FOREIGN KEY (user_id)
            REFERENCES @users@ (id) ON DELETE CASCADE
    );
    COMMENT ON TABLE @settings@ IS 'clerk-sync: the integration guide''s settings table';

    -- public is served by Supabase's Data API: with no policy, only the tables' owner and roles
    -- that bypass row-level security (Supabase's postgres, service_role) can read these rows.
    ALTER TABLE @users@ ENABLE ROW LEVEL SECURITY;
    ALTER TABLE @settings@ ENABLE ROW LEVEL SECURITY;

    CREATE FUNCTION @schema@.clerk_sync_create_settings_row() RETURNS trigger
        LANGUAGE plpgsql
        SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $fn$
        BEGIN
            INSERT INTO @settings@ (user_id)
            VALUES (NEW.id)
            ON CONFLICT (user_id) DO NOTHING;
            RETURN NEW;
        END
        $fn$;
    COMMENT ON FUNCTION @schema@.clerk_sync_create_settings_row() IS
        'clerk-sync: creates the settings row of each new user';
    CREATE TRIGGER create_user_monitoring_settings_trigger
        AFTER INSERT ON @users@
        FOR EACH ROW EXECUTE FUNCTION @schema@.clerk_sync_create_settings_row();
    COMMENT ON TRIGGER create_user_monitoring_settings_trigger ON @users@ IS
        'clerk-sync: creates the settings row of each new user';

    CREATE FUNCTION @schema@.clerk_sync_touch_updated_at() RETURNS trigger
        LANGUAGE plpgsql
        AS $fn$
        BEGIN
            NEW.updated_at = NOW();
            RETURN NEW;
        END
        $fn$;
    COMMENT ON FUNCTION @schema@.clerk_sync_touch_updated_at() IS
        'clerk-sync: keeps updated_at current';
    CREATE TRIGGER update_users_updated_at
        BEFORE UPDATE ON @users@
        FOR EACH ROW EXECUTE FUNCTION @schema@.clerk_sync_touch_updated_at();
    COMMENT ON TRIGGER update_users_updated_at ON @users@ IS
        'clerk-sync: keeps updated_at current';
END
$guide$;
