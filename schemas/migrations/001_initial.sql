-- The first FarmEye schema: who owns what, what the cameras sent, and what
-- the models and people said about it. Every time is timestamptz, so hubs
-- and workers in different time zones agree.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE farms (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE coops (
    id         bigserial PRIMARY KEY,
    farm_id    bigint NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (farm_id, name)
);

-- A device keeps its secret; the hub keeps only what verifies it
-- (farmeye/auth.py): a hex salt and PBKDF2-HMAC-SHA256(secret, salt).
CREATE TABLE devices (
    id           text PRIMARY KEY,
    name         text NOT NULL CHECK (name <> ''),
    coop_id      bigint NOT NULL REFERENCES coops (id),
    salt         text NOT NULL,
    verifier     bytea NOT NULL,
    iterations   integer NOT NULL CHECK (iterations > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_seen_at timestamptz,
    online       boolean NOT NULL DEFAULT false
);
CREATE INDEX devices_coop_idx ON devices (coop_id);

-- A user's API token is shown once; only its hash is kept.
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    token_hash text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE memberships (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    farm_id    bigint NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('manager', 'viewer', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, farm_id)
);
CREATE INDEX memberships_farm_idx ON memberships (farm_id);

-- One row per photo. (device_id, sha256) makes a retried upload land on the
-- row of the first one: INSERT ... ON CONFLICT (device_id, sha256). A photo
-- uploaded by hand has no device_id. dispatch_state tracks the hand-off to
-- the analysis queue: 'pending' rows wait for room in the queue.
CREATE TABLE captures (
    id             bigserial PRIMARY KEY,
    device_id      text REFERENCES devices (id),
    coop_id        bigint NOT NULL REFERENCES coops (id),
    farm_id        bigint NOT NULL REFERENCES farms (id),
    sha256         text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),
    content_type   text NOT NULL,
    captured_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    storage_key    text NOT NULL,
    dispatch_state text NOT NULL DEFAULT 'pending'
        CHECK (dispatch_state IN ('pending', 'queued', 'done', 'failed')),
    UNIQUE (device_id, sha256)
);
CREATE INDEX captures_coop_time_idx ON captures (coop_id, captured_at DESC, id DESC);
CREATE INDEX captures_farm_time_idx ON captures (farm_id, captured_at DESC, id DESC);
CREATE INDEX captures_pending_idx ON captures (id) WHERE dispatch_state = 'pending';

CREATE TABLE triage_results (
    capture_id    bigint PRIMARY KEY REFERENCES captures (id) ON DELETE CASCADE,
    label         text NOT NULL,
    scores        jsonb NOT NULL,
    model_version text NOT NULL,
    latency_ms    double precision NOT NULL CHECK (latency_ms >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One result per capture and model, so a redelivered task overwrites or
-- skips instead of adding a row. A failed analysis says why.
CREATE TABLE analyses (
    id            bigserial PRIMARY KEY,
    capture_id    bigint NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
    model_version text NOT NULL,
    status        text NOT NULL CHECK (status IN ('done', 'failed')),
    label         text,
    scores        jsonb,
    error         text,
    attempts      integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    heatmap_png   bytea,
    batch_size    integer CHECK (batch_size >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (capture_id, model_version),
    CHECK (status <> 'done' OR label IS NOT NULL),
    CHECK (status <> 'failed' OR error IS NOT NULL)
);

CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    farm_id         bigint NOT NULL REFERENCES farms (id) ON DELETE CASCADE,
    coop_id         bigint REFERENCES coops (id) ON DELETE CASCADE,
    capture_id      bigint REFERENCES captures (id) ON DELETE SET NULL,
    label           text,
    level           text NOT NULL,
    message         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz
);
CREATE INDEX alerts_farm_time_idx ON alerts (farm_id, created_at DESC);
CREATE INDEX alerts_coop_time_idx ON alerts (coop_id, created_at DESC);

-- What a person says the right label was; training exports read it.
CREATE TABLE feedback (
    id         bigserial PRIMARY KEY,
    capture_id bigint NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
    user_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    label      text NOT NULL,
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_capture_idx ON feedback (capture_id);
