-- The Redis outbox of the data API (src/api/data_tx.c). A transaction's
-- Redis operations, and the cache-generation bumps of the tables it wrote,
-- are inserted here in the same PostgreSQL transaction as its writes, so
-- they commit or vanish with them. After the commit they are applied to
-- Redis in seq order and deleted; rows left behind (Redis down) are retried
-- by the background flush in id order, attempts and last_error recording
-- why they are still here. Only the service's owning login role touches
-- this table: no grants to the app roles.

-- migrate:up
CREATE TABLE coredb.redis_outbox (
    id             bigserial PRIMARY KEY,
    transaction_id uuid NOT NULL,
    seq            int NOT NULL,
    op             text NOT NULL CHECK (op IN ('set', 'del', 'expire', 'incr')),
    key            text NOT NULL,
    value          text,
    ttl            int,
    created_at     timestamptz NOT NULL DEFAULT now(),
    attempts       int NOT NULL DEFAULT 0,
    last_error     text,
    UNIQUE (transaction_id, seq)
);

-- migrate:down
DROP TABLE IF EXISTS coredb.redis_outbox;
