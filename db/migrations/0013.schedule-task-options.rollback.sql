-- Schedules without task options (their tasks then use the kind's timeout and no key).
ALTER TABLE taskq_schedules
    DROP COLUMN IF EXISTS timeout_seconds,
    DROP COLUMN IF EXISTS concurrency_key;
