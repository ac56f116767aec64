-- Drop the index on failed tasks (the dashboard's recent failures become a longer scan).
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS taskq_tasks_failed_idx;
