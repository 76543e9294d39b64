-- The deployment's identity: one row, made once per database. Instances that
-- share this database share it, and prefix their Redis cache keys with it
-- (coredb:<id>:...), so deployments that share one Redis never read each
-- other's cached results or generation counters.

-- migrate:up
CREATE TABLE coredb.deployment (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    singleton  boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO coredb.deployment DEFAULT VALUES;

-- migrate:down
DROP TABLE coredb.deployment;
