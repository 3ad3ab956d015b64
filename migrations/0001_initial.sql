-- agenthook on PostgreSQL: the first layout. Records are the domain types as JSON; the columns
-- beside them are what queries select and order on. Times in columns are milliseconds since
-- the epoch (what every backend keeps of a due time).

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    status      TEXT NOT NULL,
    pending     BOOLEAN NOT NULL,
    agent_id    TEXT,
    -- 0: to submit, 1: to poll; NULL when the job waits for nothing.
    work        SMALLINT,
    due_at      BIGINT,
    -- Set by a claim; every write of that claim must match it.
    claim_token BIGINT,
    record      JSONB NOT NULL
);
CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX jobs_by_agent ON jobs (agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX jobs_due ON jobs (work, due_at) WHERE work IS NOT NULL AND due_at IS NOT NULL;

-- An event's body, once for all its deliveries.
CREATE TABLE events (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    event_id        TEXT NOT NULL REFERENCES events (id),
    job_id          TEXT,
    subscription_id TEXT,
    state           TEXT NOT NULL,
    -- 0: first attempt, 1: retry; NULL when not queued.
    queue           SMALLINT,
    due_at          BIGINT,
    -- A claim: until when it holds, and its token (every write of the claim must match it).
    lease_until     BIGINT,
    claim_token     BIGINT,
    -- Bumped by every write: a claimed copy still current is written without a read.
    version         BIGINT NOT NULL DEFAULT 0,
    record          TEXT NOT NULL
);
CREATE INDEX deliveries_by_tenant ON deliveries (tenant, id);
CREATE INDEX deliveries_by_job ON deliveries (job_id, id) WHERE job_id IS NOT NULL;
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id)
    WHERE subscription_id IS NOT NULL;
CREATE INDEX deliveries_queued ON deliveries (queue, due_at) WHERE queue IS NOT NULL;

CREATE TABLE idempotency (
    tenant      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    -- The first answer, replayed; NULL while the first request is being answered.
    response    TEXT,
    created_at  BIGINT NOT NULL,
    -- A request admitting a job holds the key: its token, and when a crashed holder's hold ends.
    hold_token  BIGINT,
    held_until  BIGINT,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);

CREATE TABLE subscriptions (
    id     TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant, id);

CREATE TABLE secrets (
    tenant TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
