-- Let a session wake the workers itself instead of through the enqueue trigger.
-- depends: 0003.cheap-name-checks

-- NOTIFY takes a database-wide lock at commit and keeps it until the commit is durable,
-- so inserting transactions that notify commit one at a time. A session that sends its
-- notifications from elsewhere after committing (the API's, app/taskq/notifier.py) sets
-- taskq.notify = 'off' and the trigger stays quiet for it. Every other session, a user's
-- own SQL included, is notified as before.
CREATE OR REPLACE FUNCTION taskq_notify_enqueued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('taskq.notify', true) = 'off' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('taskq', q.queue)
       FROM (SELECT DISTINCT queue FROM taskq_new_tasks WHERE run_at <= now()) AS q;
    RETURN NULL;
END
$$;
