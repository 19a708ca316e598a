-- The durable mirror of the cluster's links and API keys (see docs/ARCHITECTURE.md,
-- "The Postgres mirror"). Written only by the shard leaders' mirror tasks, in log order.

CREATE TABLE links (
    code        text PRIMARY KEY,
    shard       integer     NOT NULL,
    url         text        NOT NULL,
    title       text,
    tags        text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    redirect    smallint    NOT NULL,
    archived    boolean     NOT NULL,
    version     bigint      NOT NULL,
    -- Deleted links stay, marked, with their last state.
    deleted     boolean     NOT NULL DEFAULT false,
    -- The shard's log index of the change that wrote this row.
    log_index   bigint      NOT NULL
);
CREATE INDEX links_shard ON links (shard);
CREATE INDEX links_tags ON links USING gin (tags);

-- Hashes only: the keys themselves are never stored anywhere.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text        NOT NULL,
    hash        text        NOT NULL UNIQUE,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

-- How far each shard's log is mirrored (shard -1: the meta group, for the keys).
CREATE TABLE mirror_watermarks (
    shard         integer PRIMARY KEY,
    applied_index bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
