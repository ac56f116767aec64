-- Drop the columns of 0008 (timeouts, cancel requests and snooze counts are lost).
ALTER TABLE taskq_tasks DROP COLUMN IF EXISTS snoozes;
ALTER TABLE taskq_tasks DROP COLUMN IF EXISTS cancel_requested_at;
ALTER TABLE taskq_tasks DROP COLUMN IF EXISTS timeout_seconds;
