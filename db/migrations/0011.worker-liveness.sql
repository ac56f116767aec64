-- Workers whose liveness the database can see: each holds an advisory lock while its session lives.
-- depends: 0006.schedules

-- A worker takes its liveness lock (pg_advisory_lock(class, lock_key)) on a session that
-- lives as long as the worker, then records lock_key in its row of taskq_workers (0006).
-- When that session ends (the process was killed, its host lost), PostgreSQL releases the
-- lock, and any worker's sweep recovers the tasks it was running at once, without waiting
-- for their leases to expire. Rows without a lock key (workers of older releases) are
-- never taken for dead: their tasks are recovered by lease expiry only.
ALTER TABLE taskq_workers ADD COLUMN IF NOT EXISTS lock_key integer;
