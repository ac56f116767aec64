-- Flow control: per-queue limits in the registry, a concurrency key per task, claim state.
-- depends: 0005.queue-registry
-- transactional: false

-- Limits per queue; NULL means no limit. A queue with any limit is claimed by the limited
-- claim (app/taskq/sql.py CLAIM_LIMITED), which takes turns per queue; every other queue
-- keeps the plain claim and pays nothing.
ALTER TABLE taskq_queues
    ADD COLUMN IF NOT EXISTS max_running            integer CHECK (max_running >= 1),
    ADD COLUMN IF NOT EXISTS max_running_per_key    integer CHECK (max_running_per_key >= 1),
    ADD COLUMN IF NOT EXISTS rate_limit_count       integer CHECK (rate_limit_count >= 1),
    ADD COLUMN IF NOT EXISTS rate_limit_per_seconds double precision
        CHECK (rate_limit_per_seconds > 0);

-- One optional key per task (a tenant, a customer); max_running_per_key counts running
-- tasks per key. No CHECK on the task table: every CHECK is evaluated on every UPDATE of
-- every task, and the submitting surfaces validate the key already.
ALTER TABLE taskq_tasks ADD COLUMN IF NOT EXISTS concurrency_key text;

-- Claim state of limited queues, written only by the limited claim while it holds the
-- queue's turn: the recent starts (one entry per claim: its time and how many it started)
-- for the sliding rate window, and where the walk over concurrency keys stopped, so keys
-- take turns. A table of its own so that rewriting the registry (the settings file's
-- apply) never loses it.
CREATE TABLE IF NOT EXISTS taskq_queue_flow (
    queue        text PRIMARY KEY,
    start_times  timestamptz[] NOT NULL DEFAULT '{}',
    start_counts integer[]     NOT NULL DEFAULT '{}',
    key_cursor   text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Running tasks per queue and key: what the limited claim counts, and the statistics'
-- running column (index-only). CONCURRENTLY: no write lock on a live table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS taskq_tasks_running_idx
    ON taskq_tasks (queue, concurrency_key)
    WHERE status = 'running';

-- Queued tasks with a key, by key and then in claim order: the limited claim walks the
-- distinct keys of a queue with max_running_per_key (a loose index scan), so a key with a
-- long backlog at the head of the queue does not hold back the other keys. Tasks without
-- a key are not in it and cost nothing.
CREATE INDEX CONCURRENTLY IF NOT EXISTS taskq_tasks_ready_key_idx
    ON taskq_tasks (queue, concurrency_key, priority DESC, run_at, id)
    WHERE status = 'queued' AND concurrency_key IS NOT NULL;
