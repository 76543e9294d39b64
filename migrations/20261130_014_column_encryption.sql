-- Column encryption (include/coredb/encryption.h, src/security/colcrypt.c,
-- src/management/encryption.c): which columns are encrypted, their data
-- keys (only ever stored wrapped by DB_ENCRYPTION_KEY: plaintext keys never
-- reach PostgreSQL) and the progress of the online setup and rotation jobs,
-- so a job cut short by a crash or restart continues where it stopped.

-- migrate:up
CREATE TABLE coredb.encryption_columns (
    table_name text NOT NULL,
    column_name text NOT NULL,
    pk_column text NOT NULL,
    searchable boolean NOT NULL DEFAULT false,
    current_version integer NOT NULL CHECK (current_version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_rotated_at timestamptz,
    PRIMARY KEY (table_name, column_name)
);
-- version 0 is the blind-index key of a searchable column
CREATE TABLE coredb.encryption_keys (
    table_name text NOT NULL,
    column_name text NOT NULL,
    version integer NOT NULL CHECK (version >= 0),
    wrapped text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    PRIMARY KEY (table_name, column_name, version),
    FOREIGN KEY (table_name, column_name) REFERENCES coredb.encryption_columns ON DELETE CASCADE
);
CREATE TABLE coredb.encryption_jobs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('setup', 'rotate')),
    table_name text NOT NULL,
    column_name text NOT NULL,
    target_version integer NOT NULL,
    state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    rows_done bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    FOREIGN KEY (table_name, column_name) REFERENCES coredb.encryption_columns ON DELETE CASCADE
);
CREATE INDEX encryption_jobs_running ON coredb.encryption_jobs (table_name, column_name) WHERE state = 'running';
REVOKE ALL ON coredb.encryption_columns, coredb.encryption_keys, coredb.encryption_jobs FROM PUBLIC;

-- migrate:down
DROP TABLE coredb.encryption_jobs;
DROP TABLE coredb.encryption_keys;
DROP TABLE coredb.encryption_columns;
