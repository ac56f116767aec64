-- Forget worker liveness (workers then rely on lease expiry alone).
ALTER TABLE taskq_workers DROP COLUMN IF EXISTS lock_key;
