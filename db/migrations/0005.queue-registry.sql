-- Queues as things: one row per queue that has settings (pause now; limits later).
-- depends: 0004.deferrable-enqueue-notify

-- A queue exists for users as soon as it has tasks, settings or a worker; only queues
-- with settings need a row here, so submitting to a new queue never writes to this table.
-- `source` says who owns the row: 'api' (REST, CLI) or 'file' (the settings file in Git,
-- whose apply may delete rows it no longer lists, never the API's).
CREATE TABLE IF NOT EXISTS taskq_queues (
    name        text PRIMARY KEY
                CHECK (name ~ '^[A-Za-z0-9_.:-]+$' AND length(name) <= 64),
    paused      boolean NOT NULL DEFAULT false,
    paused_at   timestamptz,
    source      text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'file')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
