-- Remove workflows: dependencies, batches and the blocked status (blocked tasks are cancelled).
-- transactional: false
UPDATE taskq_tasks SET status = 'cancelled', finished_at = now(),
       last_error = 'cancelled: dependencies were removed from the schema'
 WHERE status = 'blocked';
DROP INDEX IF EXISTS taskq_tasks_cancelled_by_idx;
DROP INDEX IF EXISTS taskq_tasks_blocked_idx;
DROP INDEX IF EXISTS taskq_tasks_batch_idx;
DROP INDEX IF EXISTS taskq_tasks_batch_open_idx;
DROP TABLE IF EXISTS taskq_batches;
DROP TABLE IF EXISTS taskq_task_deps;
ALTER TABLE taskq_tasks DROP CONSTRAINT IF EXISTS taskq_tasks_status_check;
ALTER TABLE taskq_tasks ADD CONSTRAINT taskq_tasks_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE taskq_tasks DROP CONSTRAINT IF EXISTS taskq_tasks_status_blocked_check;
ALTER TABLE taskq_tasks
    DROP COLUMN IF EXISTS batch_id,
    DROP COLUMN IF EXISTS cancelled_by,
    DROP COLUMN IF EXISTS has_dependents,
    DROP COLUMN IF EXISTS blocked_by,
    DROP COLUMN IF EXISTS ref,
    DROP COLUMN IF EXISTS depends_on;
