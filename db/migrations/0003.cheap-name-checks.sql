-- Check queue and kind names with a pattern PostgreSQL evaluates cheaply.
-- depends: 0002.failed-tasks-index
-- transactional: false

-- PostgreSQL evaluates every CHECK constraint of a row on every UPDATE, whichever columns
-- change, and each task is updated at least twice (claim, finish). The bounded repetition
-- in 0001's '^[...]{1,64}$' makes the regex engine track up to 64 states per character:
-- about a quarter of the database's work in a claim + finish cycle. A '+' repetition and a
-- length test accept exactly the same names for a fraction of the cost.
--
-- Online, one step per transaction: the new constraints are added NOT VALID (a brief
-- lock, no scan), validated (a scan that blocks neither reads nor writes), and only then
-- are the old ones dropped. Every step can run again after a partial failure.
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    ALTER TABLE taskq_tasks
        DROP CONSTRAINT IF EXISTS taskq_tasks_queue_name_check,
        DROP CONSTRAINT IF EXISTS taskq_tasks_kind_name_check,
        ADD CONSTRAINT taskq_tasks_queue_name_check
            CHECK (queue ~ '^[A-Za-z0-9_.:-]+$' AND length(queue) <= 64) NOT VALID,
        ADD CONSTRAINT taskq_tasks_kind_name_check
            CHECK (kind ~ '^[A-Za-z0-9_.:-]+$' AND length(kind) <= 128) NOT VALID;
END
$$;

ALTER TABLE taskq_tasks VALIDATE CONSTRAINT taskq_tasks_queue_name_check;

ALTER TABLE taskq_tasks VALIDATE CONSTRAINT taskq_tasks_kind_name_check;

DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    ALTER TABLE taskq_tasks
        DROP CONSTRAINT IF EXISTS taskq_tasks_queue_check,
        DROP CONSTRAINT IF EXISTS taskq_tasks_kind_check;
END
$$;
