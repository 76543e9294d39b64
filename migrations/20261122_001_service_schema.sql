-- The service's own schema. coredb also holds the migration history
-- (created by the engine before this file runs), so down keeps the schema.

-- migrate:up
CREATE SCHEMA IF NOT EXISTS coredb;

CREATE TABLE coredb.audit_log (
    id          bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text,
    action      text NOT NULL,
    target      text,
    details     jsonb DEFAULT '{}',
    request_id  text
);

CREATE INDEX audit_log_occurred_at_idx ON coredb.audit_log (occurred_at);

-- migrate:down
DROP TABLE IF EXISTS coredb.audit_log;
