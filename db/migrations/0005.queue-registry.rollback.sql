DROP TABLE IF EXISTS taskq_queues;
