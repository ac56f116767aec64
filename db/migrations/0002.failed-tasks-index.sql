-- Index failed tasks by finish time, for the dashboard's recent failures.
-- depends: 0001.create-tasks
-- transactional: false

-- Without it, "the latest failures" walks the finished index backwards through every
-- succeeded task retained since the last failure. Failures are rare, so this partial
-- index stays small and costs nothing on the claim/complete path of successful tasks.
-- CONCURRENTLY: building it does not block writes on a live table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS taskq_tasks_failed_idx
    ON taskq_tasks (finished_at)
    WHERE status = 'failed';
