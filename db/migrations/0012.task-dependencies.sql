-- Workflows: tasks that wait for other tasks (status blocked), and batches with a callback.
-- depends: 0011.worker-liveness
-- transactional: false

-- A task may wait for others. Columns are added without a table rewrite (constant
-- defaults), so the migration is instant on a large table and old code keeps working.
--   depends_on      the parents, as submitted (read by the claim for the handler's
--                   context and by GET /tasks/{id}); NULL for an independent task.
--   ref             the name a batch gave the task (its children name it; the handler's
--                   context gives parents' results by it).
--   blocked_by      parents that have not succeeded yet while the task is blocked.
--   has_dependents  set on a parent when a child names it, under the parent's row lock:
--                   the worker records outcomes of tasks without dependents in one
--                   statement, and those of parents in a transaction that also releases
--                   or cancels their children (app/taskq/workflows.py).
--   cancelled_by    the parent whose failure cancelled this task (transitively): retrying
--                   that parent re-opens the task.
--   batch_id        the batch (taskq_batches) the task belongs to.
ALTER TABLE taskq_tasks
    ADD COLUMN IF NOT EXISTS depends_on     uuid[],
    ADD COLUMN IF NOT EXISTS ref            text,
    ADD COLUMN IF NOT EXISTS blocked_by     integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS has_dependents boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS cancelled_by   uuid,
    ADD COLUMN IF NOT EXISTS batch_id       uuid;

-- The new status. Online as 0003 does it: the new CHECK NOT VALID, validated (a scan that
-- blocks neither reads nor writes), then the old one dropped.
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    ALTER TABLE taskq_tasks
        DROP CONSTRAINT IF EXISTS taskq_tasks_status_blocked_check,
        ADD CONSTRAINT taskq_tasks_status_blocked_check
            CHECK (status IN ('blocked', 'queued', 'running', 'succeeded', 'failed', 'cancelled'))
            NOT VALID;
END
$$;
ALTER TABLE taskq_tasks VALIDATE CONSTRAINT taskq_tasks_status_blocked_check;
ALTER TABLE taskq_tasks DROP CONSTRAINT IF EXISTS taskq_tasks_status_check;

-- Edges of the task graph: children of a parent (the primary key, read when a parent
-- finishes) and parents of a child (the second index, read when a child is retried).
-- No foreign keys: pruning deletes finished parents without touching this table's
-- locks; rows whose tasks are gone are deleted with them (PRUNE_BATCH).
CREATE TABLE IF NOT EXISTS taskq_task_deps (
    parent_id uuid NOT NULL,
    child_id  uuid NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX IF NOT EXISTS taskq_task_deps_child_idx ON taskq_task_deps (child_id);

-- A batch of tasks submitted together, with an optional task enqueued once every member
-- is final. completed_at is set in the statement that enqueues that task, under the
-- batch row's lock: it is enqueued exactly once however many workers finish members.
CREATE TABLE IF NOT EXISTS taskq_batches (
    id                  uuid        PRIMARY KEY,
    on_complete_kind    text,
    on_complete_payload jsonb,
    on_complete_queue   text,
    on_complete_task_id uuid,
    total               integer     NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz
);

-- A batch's members that are not final yet: is the batch complete? (one probe), and its
-- progress. Only unfinished members are in it, so it stays small.
CREATE INDEX IF NOT EXISTS taskq_tasks_batch_open_idx
    ON taskq_tasks (batch_id)
    WHERE batch_id IS NOT NULL AND status IN ('blocked', 'queued', 'running');

-- Every member, for the counts by status of a batch (GET /batches/{id}, the callback).
CREATE INDEX IF NOT EXISTS taskq_tasks_batch_idx
    ON taskq_tasks (batch_id, status)
    WHERE batch_id IS NOT NULL;

-- Blocked tasks per queue (statistics, depth gauges): blocked rows only.
CREATE INDEX IF NOT EXISTS taskq_tasks_blocked_idx
    ON taskq_tasks (queue)
    WHERE status = 'blocked';

-- Tasks a parent's failure cancelled: retrying that parent re-opens them.
CREATE INDEX IF NOT EXISTS taskq_tasks_cancelled_by_idx
    ON taskq_tasks (cancelled_by)
    WHERE cancelled_by IS NOT NULL;
