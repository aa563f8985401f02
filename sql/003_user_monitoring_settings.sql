-- clerk-sync 003: one monitoring-settings row per user (created by the trigger in 004).
-- Idempotent: an existing table is left as it is.
CREATE TABLE IF NOT EXISTS public.user_monitoring_settings (
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
        REFERENCES public.users (id) ON DELETE CASCADE
);
