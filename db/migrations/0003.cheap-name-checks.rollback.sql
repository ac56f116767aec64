-- Restore 0001's name checks (same names accepted, dearer to evaluate), online.
-- transactional: false
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    ALTER TABLE taskq_tasks
        DROP CONSTRAINT IF EXISTS taskq_tasks_queue_check,
        DROP CONSTRAINT IF EXISTS taskq_tasks_kind_check,
        ADD CONSTRAINT taskq_tasks_queue_check
            CHECK (queue ~ '^[A-Za-z0-9_.:-]{1,64}$') NOT VALID,
        ADD CONSTRAINT taskq_tasks_kind_check
            CHECK (kind ~ '^[A-Za-z0-9_.:-]{1,128}$') NOT VALID;
END
$$;

ALTER TABLE taskq_tasks VALIDATE CONSTRAINT taskq_tasks_kind_check;

ALTER TABLE taskq_tasks VALIDATE CONSTRAINT taskq_tasks_queue_check;

DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    ALTER TABLE taskq_tasks
        DROP CONSTRAINT IF EXISTS taskq_tasks_queue_name_check,
        DROP CONSTRAINT IF EXISTS taskq_tasks_kind_name_check;
END
$$;
