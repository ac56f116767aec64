-- Recurring tasks (taskq_schedules) and the workers' presence (taskq_workers).
-- depends: 0005.queue-registry

-- One row per schedule. Each slot's task carries the idempotency key
-- 'schedule:<name>:<slot in UTC>', so however many workers enqueue the same slot, one
-- insert wins and the others are no-ops: no leader is needed. next_run_at is the next
-- slot not yet enqueued, kept by whoever enqueued the last one (or wrote the schedule).
-- `source` as in taskq_queues: 'file' rows belong to the settings file, whose apply may
-- delete them; 'api' rows are never touched by it.
CREATE TABLE IF NOT EXISTS taskq_schedules (
    name          text PRIMARY KEY
                  CHECK (name ~ '^[A-Za-z0-9_.:-]+$' AND length(name) <= 64),
    cron          text CHECK (length(cron) <= 200),
    every_seconds integer CHECK (every_seconds BETWEEN 1 AND 31622400),
    timezone      text NOT NULL DEFAULT 'UTC',
    kind          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue         text NOT NULL DEFAULT 'default',
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  integer CHECK (max_attempts BETWEEN 1 AND 1000),
    enabled       boolean NOT NULL DEFAULT true,
    source        text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'file')),
    next_run_at   timestamptz,
    last_run_at   timestamptz,
    last_task_id  uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT taskq_schedules_cron_or_every CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);

-- The schedulers' one question, asked every second by every worker: what is due?
CREATE INDEX IF NOT EXISTS taskq_schedules_due_idx
    ON taskq_schedules (next_run_at) WHERE enabled;

-- One row per running worker and the queues it serves, renewed every few seconds; the
-- queue registry (GET /queues) counts the workers seen recently. A worker that died
-- leaves a row that stops being counted, and is deleted an hour later by any worker.
CREATE TABLE IF NOT EXISTS taskq_workers (
    id         text PRIMARY KEY,
    queues     text[] NOT NULL DEFAULT '{}',  -- filled by the presence service
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);
