-- Drop everything 0001 created (destroys all tasks).
DROP TRIGGER IF EXISTS taskq_tasks_notify ON taskq_tasks;
DROP FUNCTION IF EXISTS taskq_notify_enqueued();
DROP TABLE IF EXISTS taskq_tasks;
DROP FUNCTION IF EXISTS taskq_uuid_v7();
