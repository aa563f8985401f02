-- clerk-sync 002: the users table, exactly as the integration guide defines it.
-- Idempotent: an existing table is left as it is.
CREATE TABLE IF NOT EXISTS public.users (
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
