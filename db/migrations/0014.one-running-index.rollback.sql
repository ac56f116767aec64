-- The two running-task indexes of before: flow control's and the lease sweep's.
-- transactional: false
CREATE INDEX CONCURRENTLY IF NOT EXISTS taskq_tasks_lease_idx
    ON taskq_tasks (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX CONCURRENTLY IF NOT EXISTS taskq_tasks_running_idx
    ON taskq_tasks (queue, concurrency_key)
    WHERE status = 'running';
DROP INDEX CONCURRENTLY IF EXISTS taskq_tasks_running_lease_idx;
