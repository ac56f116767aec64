-- Forget worker liveness (workers then rely on lease expiry alone).
DROP TABLE IF EXISTS taskq_workers;
