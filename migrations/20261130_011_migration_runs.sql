-- Migration runs started over HTTP (POST /api/v1/migrations/run): their
-- state lives here so any instance can answer GET /runs/{id} while the
-- instance that started the run applies it in the background, file by file.
-- migrate:up
CREATE TABLE coredb.migration_runs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL DEFAULT 'up',
    status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    dry_run boolean NOT NULL DEFAULT false,
    target_version text,
    current_step integer NOT NULL DEFAULT 0,
    total_steps integer NOT NULL DEFAULT 0,
    estimated_remaining_s integer NOT NULL DEFAULT 0,
    started_by text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result jsonb,
    error jsonb
);
REVOKE ALL ON coredb.migration_runs FROM PUBLIC;

-- migrate:down
DROP TABLE IF EXISTS coredb.migration_runs;
