-- Workers whose liveness the database can see: each holds an advisory lock while its session lives.
-- depends: 0005.queue-registry

-- A worker registers here after taking its liveness lock (pg_advisory_lock(class, lock_key))
-- on a session that lives as long as the worker. When that session ends (the process was
-- killed, its host lost), PostgreSQL releases the lock, and any worker's sweep recovers
-- the tasks it was running at once, without waiting for their leases to expire. Workers
-- of older releases never register, so their tasks are recovered by lease expiry only.
CREATE TABLE IF NOT EXISTS taskq_workers (
    id          text PRIMARY KEY,
    lock_key    integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
