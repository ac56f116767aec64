-- The enqueue trigger notifies for every session again (0001's function).
CREATE OR REPLACE FUNCTION taskq_notify_enqueued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskq', q.queue)
       FROM (SELECT DISTINCT queue FROM taskq_new_tasks WHERE run_at <= now()) AS q;
    RETURN NULL;
END
$$;
