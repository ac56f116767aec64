-- Remove flow control: the claim state, the concurrency key and the queue limits.
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS taskq_tasks_ready_key_idx;
DROP INDEX CONCURRENTLY IF EXISTS taskq_tasks_running_idx;
DROP TABLE IF EXISTS taskq_queue_flow;
ALTER TABLE taskq_tasks DROP COLUMN IF EXISTS concurrency_key;
ALTER TABLE taskq_queues
    DROP COLUMN IF EXISTS max_running,
    DROP COLUMN IF EXISTS max_running_per_key,
    DROP COLUMN IF EXISTS rate_limit_count,
    DROP COLUMN IF EXISTS rate_limit_per_seconds;
