DROP TABLE IF EXISTS taskq_workers;
DROP TABLE IF EXISTS taskq_schedules;
