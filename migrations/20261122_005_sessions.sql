-- Sessions and refresh tokens (src/api/auth.c). A session is alive while
-- revoked_at is null, expires_at (the absolute lifetime end) is ahead and
-- last_seen_at is within SESSION_TIMEOUT; access tokens name it in "sid".
-- Refresh tokens are stored only as their SHA-256; used_at marks a spent
-- one, so presenting it again is detected as reuse. Only the service's
-- owning login role touches these tables: no grants to the app roles.

-- migrate:up
CREATE TABLE coredb.sessions (
    session_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES public.users (user_id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text,
    ip_address     text,
    user_agent     text
);
-- live sessions of a user: login limits, revoke, the session list
CREATE INDEX sessions_user_live_idx ON coredb.sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE coredb.refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES coredb.sessions (session_id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON coredb.refresh_tokens (session_id);

-- migrate:down
DROP TABLE IF EXISTS coredb.refresh_tokens;
DROP TABLE IF EXISTS coredb.sessions;
