-- A schedule's tasks carry the task options a submit can give: the attempt timeout
-- (0008) and the concurrency key of the queue's max_running_per_key (0007).
-- depends: 0011.worker-liveness

-- Same rules as the task columns they are copied into, so a slot's insert never fails
-- on a value the schedule row accepted.
ALTER TABLE taskq_schedules
    ADD COLUMN IF NOT EXISTS timeout_seconds double precision
        CONSTRAINT taskq_schedules_timeout_check CHECK (timeout_seconds > 0),
    ADD COLUMN IF NOT EXISTS concurrency_key text
        CONSTRAINT taskq_schedules_concurrency_key_check
        CHECK (concurrency_key ~ '^[A-Za-z0-9_.:-]+$' AND length(concurrency_key) <= 64);
