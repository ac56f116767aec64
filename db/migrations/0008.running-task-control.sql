-- Control of running tasks: a per-task timeout, a cancel request a running task's worker acts on, and a count of snoozes.
-- depends: 0005.queue-registry

-- Seconds an attempt may run before the worker stops it; NULL: the kind's default (if any).
-- Added with its CHECK at once: the column is new, so there is nothing to validate.
ALTER TABLE taskq_tasks ADD COLUMN IF NOT EXISTS timeout_seconds double precision
    CONSTRAINT taskq_tasks_timeout_check CHECK (timeout_seconds > 0);

-- Set by POST /tasks/{id}/cancel on a running task. The worker that owns the attempt stops
-- it; whatever outcome it then records, the task ends cancelled (enforced by FINISH), and a
-- recovered lease of such a task cancels it instead of queueing it again.
ALTER TABLE taskq_tasks ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz;

-- Attempts that ended with Snooze: given back (they do not count against max_attempts)
-- and counted here instead.
ALTER TABLE taskq_tasks ADD COLUMN IF NOT EXISTS snoozes integer NOT NULL DEFAULT 0;
