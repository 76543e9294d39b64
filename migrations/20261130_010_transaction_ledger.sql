-- The transaction ledger (src/api/ledger.c, data_tx.c, users.c): one row per
-- committed data transaction, and per user creation sent with an
-- Idempotency-Key, written INSIDE that transaction. A row exists iff the
-- transaction committed, so after a connection lost at COMMIT,
-- GET /api/v1/data/transactions/{id} can tell "committed" from "did not
-- commit" (no row). With an Idempotency-Key the row also keeps the request's
-- keyed hash and the answer that was sent, so a retry of the same request
-- replays the answer instead of running twice.
--
-- scope: who owns the key space: the caller's user id, or 'anonymous' for
-- registrations without a token (keys are meant to be random; a replay
-- needs the identical body, password included, so it reveals nothing the
-- caller did not send). Rows older than 24 h are expired by the background
-- job (jobs.c) in bounded batches; the claim below also ignores and removes
-- an expired row of the key it is asked about, so expiry is exact.
-- Only the service's login role touches this table and the function: no
-- grants to the app roles, whose data API sees only the tables they hold
-- privileges on (catalog.c).

-- migrate:up
CREATE TABLE coredb.tx_ledger (
    transaction_id  uuid PRIMARY KEY,
    user_id         uuid,
    scope           text,
    idempotency_key text,
    request_hash    bytea,
    status_code     int,
    response        text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((idempotency_key IS NULL) = (scope IS NULL)),
    CHECK (idempotency_key IS NULL OR (request_hash IS NOT NULL AND status_code IS NOT NULL))
);
CREATE UNIQUE INDEX tx_ledger_idempotency ON coredb.tx_ledger (scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tx_ledger_created_at ON coredb.tx_ledger (created_at);

-- First statement of a keyed transaction, as the login role. Never waits:
-- a second request with the same key while the first is running fails the
-- try-lock (held until the first commits or rolls back) -> CDB09, which the
-- service answers 409. After the first committed its row is visible here
-- (the lock is released after the commit is visible): the same request hash
-- -> CDB00 (the service rolls back and replays the stored answer), another
-- -> CDB22 (422). Raising aborts the rest of the pipelined transaction, so
-- nothing of a refused request runs.
CREATE FUNCTION coredb.tx_ledger_claim(p_scope text, p_key text, p_hash bytea) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    stored bytea;
BEGIN
    IF NOT pg_try_advisory_xact_lock(20261130, hashtext(p_scope || '/' || p_key)) THEN
        RAISE EXCEPTION 'idempotency key in use' USING ERRCODE = 'CDB09';
    END IF;
    DELETE FROM coredb.tx_ledger WHERE scope = p_scope AND idempotency_key = p_key
        AND created_at < clock_timestamp() - interval '24 hours';
    SELECT request_hash INTO stored FROM coredb.tx_ledger
        WHERE scope = p_scope AND idempotency_key = p_key;
    IF FOUND THEN
        IF stored = p_hash THEN
            RAISE EXCEPTION 'idempotent replay' USING ERRCODE = 'CDB00';
        END IF;
        RAISE EXCEPTION 'idempotency key reused' USING ERRCODE = 'CDB22';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION coredb.tx_ledger_claim(text, text, bytea) FROM PUBLIC;

-- migrate:down
DROP FUNCTION IF EXISTS coredb.tx_ledger_claim(text, text, bytea);
DROP TABLE IF EXISTS coredb.tx_ledger;
