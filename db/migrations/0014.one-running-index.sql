-- One index of running tasks instead of two: flow control's (queue, concurrency_key) and
-- the lease sweep's (lease_expires_at) become one (queue, concurrency_key,
-- lease_expires_at). No claim is a HOT update (the status is in every partial index's
-- predicate), so each claim and each lease renewal wrote an entry in both; now one. The
-- running set is small (at most every worker's slots), so the lease sweep reads all of
-- it and sorts by expiry at no measurable cost, and flow control's counts stay
-- index-only. CONCURRENTLY: no write lock on a live table.
-- depends: 0007.flow-control 0011.worker-liveness
-- transactional: false
CREATE INDEX CONCURRENTLY IF NOT EXISTS taskq_tasks_running_lease_idx
    ON taskq_tasks (queue, concurrency_key, lease_expires_at)
    WHERE status = 'running';
DROP INDEX CONCURRENTLY IF EXISTS taskq_tasks_running_idx;
DROP INDEX CONCURRENTLY IF EXISTS taskq_tasks_lease_idx;
