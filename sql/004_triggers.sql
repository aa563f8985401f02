-- clerk-sync 004: the guide's two triggers on users.
--   * AFTER INSERT: create the user's monitoring-settings row (idempotent: ON CONFLICT). It runs
--     as its owner (SECURITY DEFINER, fixed search_path), so a role that may only insert users
--     (and the web app's) still gets the settings row.
--   * BEFORE UPDATE: keep updated_at current.
-- Functions and triggers are created only when absent: an existing one (maybe your own, with
-- the same name) is never replaced.
DO $$
BEGIN
    IF to_regprocedure('public.create_user_monitoring_settings()') IS NULL THEN
        CREATE FUNCTION public.create_user_monitoring_settings() RETURNS trigger
            LANGUAGE plpgsql
            SECURITY DEFINER
            SET search_path = public, pg_temp
            AS $fn$
            BEGIN
                INSERT INTO public.user_monitoring_settings (user_id)
                VALUES (NEW.id)
                ON CONFLICT (user_id) DO NOTHING;
                RETURN NEW;
            END
            $fn$;
    END IF;

    IF to_regprocedure('public.update_updated_at_column()') IS NULL THEN
        CREATE FUNCTION public.update_updated_at_column() RETURNS trigger
            LANGUAGE plpgsql
            AS $fn$
            BEGIN
                NEW.updated_at = NOW();
                RETURN NEW;
            END
            $fn$;
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'public.users'::regclass
          AND tgname = 'create_user_monitoring_settings_trigger'
    ) THEN
        CREATE TRIGGER create_user_monitoring_settings_trigger
            AFTER INSERT ON public.users
            FOR EACH ROW EXECUTE FUNCTION public.create_user_monitoring_settings();
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'public.users'::regclass AND tgname = 'update_users_updated_at'
    ) THEN
        CREATE TRIGGER update_users_updated_at
            BEFORE UPDATE ON public.users
            FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
    END IF;
END
$$;
