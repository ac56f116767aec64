-- Create the tasks table, its indexes and the enqueue notification trigger.
-- depends:

-- Time-ordered UUIDs (version 7 layout): new rows land at the right edge of the primary
-- key index instead of at random pages, and ids sort in creation order, which makes
-- them usable as a stable pagination cursor and as the FIFO tie-breaker of the claim.
CREATE FUNCTION taskq_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(
      set_bit(
        overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
        52, 1),
      53, 1),
    'hex')::uuid
$$;

CREATE TABLE taskq_tasks (
    id               uuid        PRIMARY KEY DEFAULT taskq_uuid_v7(),
    queue            text        NOT NULL DEFAULT 'default',
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- text + CHECK rather than an enum: adding a status later is a plain migration that
    -- can run inside a transaction.
    status           text        NOT NULL DEFAULT 'queued',
    -- Higher runs first.
    priority         integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- Number of times the task has been claimed; also the fencing token of a lease.
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5,
    lease_expires_at timestamptz,
    worker_id        text,
    last_error       text,
    result           jsonb,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT taskq_tasks_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    CONSTRAINT taskq_tasks_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT taskq_tasks_queue_check CHECK (queue ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    CONSTRAINT taskq_tasks_kind_check CHECK (kind ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    CONSTRAINT taskq_tasks_priority_check CHECK (priority BETWEEN -32768 AND 32767),
    CONSTRAINT taskq_tasks_attempts_check CHECK (attempts >= 0),
    CONSTRAINT taskq_tasks_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 1000),
    -- A running task always has an owner and a lease; nothing else has a lease.
    CONSTRAINT taskq_tasks_lease_check
        CHECK ((status = 'running') = (lease_expires_at IS NOT NULL AND worker_id IS NOT NULL))
) WITH (
    -- Every task is updated two or three times (claim, heartbeats, finish). Free space on
    -- each page lets those updates stay on the page, and aggressive autovacuum keeps the
    -- dead versions from piling up under high churn.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim index: only queued rows, in exactly the claim's ORDER BY, per queue. Finished
-- rows (the bulk of the table in steady state) are not in it, so retained history does
-- not slow the claim down.
CREATE INDEX taskq_tasks_ready_idx
    ON taskq_tasks (queue, priority DESC, run_at, id)
    WHERE status = 'queued';

-- The lease sweep scans only running rows whose lease has passed.
CREATE INDEX taskq_tasks_lease_idx
    ON taskq_tasks (lease_expires_at)
    WHERE status = 'running';

-- Idempotency keys are unique while the task exists (pruning frees the key).
CREATE UNIQUE INDEX taskq_tasks_idempotency_key_idx
    ON taskq_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Pruning deletes finished rows by age.
CREATE INDEX taskq_tasks_finished_idx
    ON taskq_tasks (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');

-- Wake workers once per INSERT statement and queue, not once per row: a bulk enqueue of
-- 10,000 tasks sends one notification, and identical payloads within a transaction are
-- merged by PostgreSQL. Tasks scheduled for later are left to the workers' polling.
-- A statement trigger (rather than NOTIFY in application code) means every insert path,
-- including a user's own SQL inside their transaction, wakes the workers on commit.
CREATE FUNCTION taskq_notify_enqueued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskq', q.queue)
       FROM (SELECT DISTINCT queue FROM taskq_new_tasks WHERE run_at <= now()) AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER taskq_tasks_notify
    AFTER INSERT ON taskq_tasks
    REFERENCING NEW TABLE AS taskq_new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_notify_enqueued();
