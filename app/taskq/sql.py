"""Every statement that touches taskq_tasks, each with a name and a one-line purpose.

Only the data layer executes these (taskq/queue.py; taskq/stats.py for statistics).
Parameters are always bound (%(name)s), never formatted in. Statements that take many
tasks use arrays + unnest so a batch is one round trip. One module on purpose, however
long: every statement on the table is reviewed side by side with the indexes it relies on.
"""

from __future__ import annotations

from typing import LiteralString

# Enqueue one task; on an idempotency-key clash return nothing (the caller then reads the
# existing row). Only the columns the database chose come back: the caller knows the

# The one notification channel: payloads are queue names. The enqueue trigger of
# migrations 0001/0004 notifies on the same channel by name.
CHANNEL: LiteralString = "taskq"

# Subscribe a listener's session to the channel.
LISTEN: LiteralString = "LISTEN " + CHANNEL

# The control channel: payloads are ids of running tasks whose cancel was requested. A
# channel of its own so a worker's wake-up path never parses ids, and cancels stay rare.
CONTROL_CHANNEL: LiteralString = "taskq_control"

# Subscribe a listener's session to the control channel as well.
LISTEN_CONTROL: LiteralString = "LISTEN " + CONTROL_CHANNEL

# Tell every worker that a running task's cancel was requested (sent at commit).
NOTIFY_CANCEL: LiteralString = "SELECT pg_notify('" + CONTROL_CHANNEL + "', %(id)s::text)"

# rest, and not sending the payload back keeps the API's busiest statement lean.
INSERT_TASK: LiteralString = """
INSERT INTO taskq_tasks (queue, kind, payload, priority, run_at, max_attempts, idempotency_key,
                         timeout_seconds, concurrency_key)
VALUES (%(queue)s, %(kind)s, %(payload)s, %(priority)s,
        COALESCE(%(run_at)s::timestamptz, now() + %(delay)s * interval '1 second'),
        %(max_attempts)s, %(idempotency_key)s, %(timeout)s, %(concurrency_key)s)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, run_at, created_at
"""

# Enqueue many tasks in one statement (ids chosen by the caller so results map back to
# input order); rows whose idempotency key already exists are skipped. The rows travel as
# one JSON document, unpacked here: psycopg would otherwise dump eleven arrays element by
# element in Python, the larger part of what a group of single submissions costs the API.
# Only what the database chose comes back; the caller knows the rest.
INSERT_TASKS: LiteralString = """
INSERT INTO taskq_tasks (id, queue, kind, payload, priority, run_at, max_attempts, idempotency_key,
                         timeout_seconds, concurrency_key)
SELECT i.id, i.queue, i.kind, i.payload, i.priority,
       COALESCE(i.run_at, now() + i.delay * interval '1 second'), i.max_attempts, i.key,
       i.timeout, i.ckey
  FROM json_to_recordset(%(tasks)s::json)
       AS i(id uuid, queue text, kind text, payload jsonb, priority int, run_at timestamptz,
            delay float8, max_attempts int, key text, timeout float8, ckey text)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, run_at, created_at
"""

# Read the tasks holding the given idempotency keys (after an insert skipped them).
SELECT_BY_KEYS: LiteralString = """
SELECT *, false AS created FROM taskq_tasks WHERE idempotency_key = ANY(%(keys)s::text[])
"""

# A registry row (alias l) with any flow-control limit: such queues are claimed one
# worker at a time under the queue's lock (CLAIM_LIMITED), all others by CLAIM.
LIMITED: LiteralString = (
    "(l.max_running IS NOT NULL OR l.max_running_per_key IS NOT NULL"
    " OR (l.rate_limit_count IS NOT NULL AND l.rate_limit_per_seconds IS NOT NULL))"
)

# For the rest of this transaction, prepared statements run their generic plan (psycopg
# prepares a statement after a few runs). For the claim statements, whose best plan does
# not depend on the parameter values (index probes on the queue name, small limits) and
# whose planning costs about half of their execution.
GENERIC_PLAN: LiteralString = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"

# Claim up to `limit` runnable tasks from the worker's queues, in priority, run_at, id
# order. One LATERAL probe per queue keeps every probe on the ready index (an ANY() over
# the leading column would force a sort of every ready row); SKIP LOCKED lets concurrent
# workers pass each other instead of queueing on row locks; the status check in the
# UPDATE makes the queued -> running transition conditional even if the row changed
# meanwhile. Only what a worker needs comes back, already in claim order (UPDATE ...
# RETURNING has none of its own), with the time the task waited after becoming runnable.
# With several queues, each probe locks up to `limit` rows and only the best `limit` of
# them are claimed; the others are unlocked when the statement commits, a moment later.
# Paused queues (taskq_queues.paused) are dropped before any probe, by an anti-join with
# that small table (microseconds), so a pause takes effect at every worker's next claim.
CLAIM: LiteralString = (
    """
WITH ready AS (
    SELECT c.id
      FROM unnest(%(queues)s::text[]) AS q(name)
      CROSS JOIN LATERAL (
            -- Flow control: queues with limits are claimed by CLAIM_LIMITED instead. A
            -- condition on the queue alone, checked once per queue (a probe of the small
            -- registry's primary key), so queues without limits pay nothing per task.
            SELECT q.name WHERE NOT EXISTS (
                SELECT 1 FROM taskq_queues l
                 WHERE l.name = q.name AND """
    + LIMITED
    + """)
           ) AS unlimited
      CROSS JOIN LATERAL (
            SELECT t.id, t.priority, t.run_at
              FROM taskq_tasks t
             WHERE t.status = 'queued' AND t.queue = unlimited.name AND t.run_at <= now()
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED
           ) AS c
     WHERE NOT EXISTS (SELECT 1 FROM taskq_queues p WHERE p.name = q.name AND p.paused)
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT %(limit)s
), claimed AS (
    UPDATE taskq_tasks t
       SET status = 'running',
           attempts = t.attempts + 1,
           worker_id = %(worker_id)s,
           lease_expires_at = now() + %(lease)s * interval '1 second',
           started_at = now(),
           updated_at = now()
     WHERE t.id = ANY(ARRAY(SELECT id FROM ready)) AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.attempts, t.max_attempts, t.priority, t.run_at,
              t.timeout_seconds, t.depends_on
)
SELECT id, queue, kind, payload::text, attempts, max_attempts,
       greatest(extract(epoch FROM now() - run_at), 0)::float8 AS waited, timeout_seconds,
       depends_on
  FROM claimed
 ORDER BY priority DESC, run_at, id
"""
)

# ---------------------------------------------------------------- flow control
# A queue with limits (max_running, max_running_per_key, rate_limit) is claimed in a
# transaction of its own: QUEUE_TURN, then CLAIM_LIMITED. The turn is a transaction-level
# advisory lock on the queue's name, so the claims of one limited queue take turns across
# all workers, and CLAIM_LIMITED, a new statement with a new snapshot (READ COMMITTED),
# sees every task the previous turn started. Its counts are therefore exact, and limits
# are never exceeded however many workers claim at once. Unlimited queues never take the
# lock; finishing, releasing and the lease sweep never take it either (they only lower the
# counts, which a later turn sees).

# Wait for this queue's claim turn (released at commit). 0x7471 ('tq') is taskq's lock
# class; two queue names with the same hash merely share turns. Also: CLAIM_LIMITED in
# this transaction runs its generic plan (it is prepared after a few runs). Planning the
# statement costs several times what running it does, and its best plan does not depend
# on the parameter values (index probes on the queue name, small limits).
QUEUE_TURN: LiteralString = """
SELECT pg_advisory_xact_lock(29809, hashtext(%(queue)s)),
       set_config('plan_cache_mode', 'force_generic_plan', true)
"""

# Which of the given queues have limits (the worker claims those with CLAIM_LIMITED),
# whether each has a rate limit (only those need RATE_WAIT after a short claim), and
# whether the asking worker is alone on it: no other worker seen within `fresh` seconds
# serves it (taskq_workers). A worker alone on a limited queue records that queue's
# outcomes in its next claim's transaction (taskq/flow.py claim_limited).
_ALONE: LiteralString = (
    "NOT EXISTS (SELECT 1 FROM taskq_workers w WHERE w.id <> %(worker_id)s"
    " AND {queue} = ANY(w.queues) AND w.seen_at > now() - %(fresh)s * interval '1 second')"
)
LIMITED_QUEUES: LiteralString = (
    "SELECT l.name,"
    " (l.rate_limit_count IS NOT NULL AND l.rate_limit_per_seconds IS NOT NULL) AS rated, "
    + _ALONE.replace("{queue}", "l.name")
    + " AS alone,"
    " (l.max_running_per_key IS NULL"
    " AND (l.rate_limit_count IS NULL OR l.rate_limit_per_seconds IS NULL)) AS max_running_only"
    " FROM taskq_queues l WHERE l.name = ANY(%(queues)s::text[]) AND " + LIMITED
)

# Claim up to `limit` tasks of one limited queue, within its limits, holding its turn.
# - budget: the fewest of `limit`, max_running minus the queue's running tasks (counted
#   on the running index), and rate_limit_count minus the starts recorded in the sliding
#   window (taskq_queue_flow).
#   A paused queue has no budget.
# - Without a per-key limit: the head of the queue, as CLAIM takes it.
# - With max_running_per_key: first the head of the queue (its first `limit` runnable
#   tasks in claim order, on the ready index), taking key-less tasks and those whose key
#   has room, so priority and age order the claim across keys; then, only if budget is
#   left, a walk over the distinct keys on the keyed ready index, starting after the key
#   where the previous walk stopped and wrapping around once, taking from each key as
#   many more tasks as it has room for (priority orders tasks within a key; keys take
#   turns, so a key with a deep backlog at the head does not hold back the others). The
#   walk stops when the budget is spent; a claim the head fills never walks.
# - The starts (when a rate limit is set) and the walk's stopping point (when it walked)
#   are recorded in taskq_queue_flow; start entries older than the window are dropped
#   there.
# Rows come back as CLAIM's, each with `room_left`: what max_running and the rate window
# leave after this claim (0: the queue is full; NULL: neither limit is set).
CLAIM_LIMITED: LiteralString = """
WITH RECURSIVE clock AS MATERIALIZED (
    -- Read during execution, so after this statement's snapshot: later than the commit of
    -- every finish and every turn this claim saw. Start times (started_at and the rate
    -- window's entries) therefore increase from turn to turn, and a task's start is never
    -- before the recorded finish of the task whose room it takes.
    SELECT clock_timestamp() AS now
), lim AS (
    SELECT l.max_running, l.max_running_per_key, l.paused,
           CASE WHEN l.rate_limit_per_seconds IS NOT NULL THEN l.rate_limit_count END
               AS rate_count,
           l.rate_limit_per_seconds AS rate_seconds
      FROM taskq_queues l WHERE l.name = %(queue)s
), flow AS (
    SELECT f.start_times, f.start_counts, f.key_cursor
      FROM taskq_queue_flow f WHERE f.queue = %(queue)s
), busy AS MATERIALIZED (
    SELECT t.concurrency_key AS key, count(*)::int AS n
      FROM taskq_tasks t
     WHERE t.status = 'running' AND t.queue = %(queue)s
     GROUP BY t.concurrency_key
), busy_keys AS MATERIALIZED (
    -- The same counts as one jsonb object by key, for `keyed` to look each walked key up
    -- in (a binary search): joined to `busy` instead, the generic plan scans all of busy
    -- once per walked key (it expects one running task), 64 x 64 rows per claim.
    SELECT COALESCE(jsonb_object_agg(b.key, b.n) FILTER (WHERE b.key IS NOT NULL), '{}')
               AS n
      FROM busy b
), room AS MATERIALIZED (
    -- What max_running and the rate window leave (NULL: neither is set).
    SELECT least(
               (SELECT max_running FROM lim) - (SELECT COALESCE(sum(n), 0) FROM busy),
               (SELECT lim.rate_count - COALESCE(sum(s.n), 0)
                  FROM lim, flow, unnest(flow.start_times, flow.start_counts) AS s(t, n)
                 WHERE s.t > (SELECT now FROM clock) - lim.rate_seconds * interval '1 second'
                 GROUP BY lim.rate_count),
               (SELECT rate_count FROM lim))::int AS n
), budget AS MATERIALIZED (
    SELECT CASE WHEN COALESCE((SELECT paused FROM lim), false) THEN 0
                ELSE greatest(0, least(%(limit)s::int, (SELECT n FROM room))) END AS n
), plain AS (
    SELECT t.id, NULL::text AS key, false AS wrapped, 0 AS part
      FROM taskq_tasks t
     WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.run_at <= now()
       AND (SELECT max_running_per_key FROM lim) IS NULL
     ORDER BY t.priority DESC, t.run_at, t.id
     LIMIT (SELECT n FROM budget)
), head AS MATERIALIZED (
    -- The head of the queue in claim order (the ready index has no key column: a heap
    -- read per row for the key), each task ranked within its key.
    SELECT h.id, h.concurrency_key AS key, h.priority, h.run_at,
           row_number() OVER (PARTITION BY h.concurrency_key
                              ORDER BY h.priority DESC, h.run_at, h.id) AS rank
      FROM (SELECT t.id, t.concurrency_key, t.priority, t.run_at
              FROM taskq_tasks t
             WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.run_at <= now()
               AND (SELECT max_running_per_key FROM lim) IS NOT NULL
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT %(limit)s::int) h
), head_taken AS MATERIALIZED (
    -- What the head gives: key-less tasks, and a key's best tasks up to its room. Within
    -- a key the head's tasks are its best runnable ones, so the walk below continues a
    -- key after the ones taken here (rank).
    SELECT h.id, h.key, h.priority, h.run_at
      FROM head h
     WHERE h.key IS NULL
        OR h.rank <= (SELECT max_running_per_key FROM lim)
                     - COALESCE(((SELECT n FROM busy_keys) ->> h.key)::int, 0)
), head_by_key AS MATERIALIZED (
    SELECT COALESCE(jsonb_object_agg(h.key, h.n), '{}') AS n
      FROM (SELECT key, count(*)::int AS n FROM head_taken WHERE key IS NOT NULL GROUP BY key) h
), walk(key, wrapped, id, runnable) AS (
    -- Each step is one probe of the keyed ready index: the first entry after the current
    -- key is the next key's best task (the index is in claim order within a key).
    SELECT x.key, x.wrapped, x.id, x.runnable FROM (
        (SELECT t.concurrency_key AS key, false AS wrapped, t.id, t.run_at <= now() AS runnable
           FROM taskq_tasks t
          WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.concurrency_key IS NOT NULL
            AND t.concurrency_key > COALESCE((SELECT key_cursor FROM flow), '')
            AND (SELECT max_running_per_key FROM lim) IS NOT NULL
          ORDER BY t.concurrency_key, t.priority DESC, t.run_at, t.id LIMIT 1)
        UNION ALL
        (SELECT t.concurrency_key, true, t.id, t.run_at <= now()
           FROM taskq_tasks t
          WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.concurrency_key IS NOT NULL
            AND (SELECT max_running_per_key FROM lim) IS NOT NULL
          ORDER BY t.concurrency_key, t.priority DESC, t.run_at, t.id LIMIT 1)
        LIMIT 1) AS x
     WHERE NOT (x.wrapped AND x.key > COALESCE((SELECT key_cursor FROM flow), ''))
    UNION ALL
    SELECT n.key, n.wrapped, n.id, n.runnable
      FROM walk w
     CROSS JOIN LATERAL (
           (SELECT t.concurrency_key AS key, w.wrapped, t.id, t.run_at <= now() AS runnable
              FROM taskq_tasks t
             WHERE t.status = 'queued' AND t.queue = %(queue)s
               AND t.concurrency_key > w.key
             ORDER BY t.concurrency_key, t.priority DESC, t.run_at, t.id LIMIT 1)
           UNION ALL
           (SELECT t.concurrency_key, true, t.id, t.run_at <= now()
              FROM taskq_tasks t
             WHERE NOT w.wrapped AND t.status = 'queued' AND t.queue = %(queue)s
               AND t.concurrency_key IS NOT NULL
             ORDER BY t.concurrency_key, t.priority DESC, t.run_at, t.id LIMIT 1)
           LIMIT 1) AS n
     WHERE NOT (n.wrapped AND n.key > COALESCE((SELECT key_cursor FROM flow), ''))
), keyed AS (
    -- Per key: the walk's own task when it is runnable, and more of the key's runnable
    -- tasks only when it has room for more than one (or its best task is not runnable
    -- yet), as many as the key has room for.
    SELECT c.id, w.key, w.wrapped, 2 AS part
      FROM walk w
     CROSS JOIN LATERAL (
           SELECT w.id, 1::bigint AS rank WHERE w.runnable
           UNION ALL
           SELECT m.id, m.rank
             FROM (SELECT t.id, row_number() OVER () AS rank
                     FROM (SELECT t.id FROM taskq_tasks t
                            WHERE t.status = 'queued' AND t.queue = %(queue)s
                              AND t.concurrency_key = w.key AND t.run_at <= now()
                            ORDER BY t.priority DESC, t.run_at, t.id
                            LIMIT (SELECT max_running_per_key FROM lim)) AS t) AS m
            WHERE ((SELECT max_running_per_key FROM lim) > 1 OR NOT w.runnable)
              AND NOT (w.runnable AND m.id = w.id)
           ) AS c
     WHERE c.rank <= (SELECT max_running_per_key FROM lim)
                     - COALESCE(((SELECT n FROM busy_keys) ->> w.key)::int, 0)
       AND c.rank > COALESCE(((SELECT n FROM head_by_key) ->> w.key)::int, 0)
), chosen AS MATERIALIZED (
    -- In this order, as far as the budget goes: a part not needed is never run.
    SELECT * FROM (
        SELECT * FROM plain
        UNION ALL
        (SELECT ht.id, NULL::text AS key, false AS wrapped, 1 AS part
           FROM head_taken ht ORDER BY ht.priority DESC, ht.run_at, ht.id)
        UNION ALL
        SELECT * FROM keyed) AS x
     LIMIT (SELECT n FROM budget)
), claimed AS (
    UPDATE taskq_tasks t
       SET status = 'running',
           attempts = t.attempts + 1,
           worker_id = %(worker_id)s,
           lease_expires_at = (SELECT now FROM clock) + %(lease)s * interval '1 second',
           started_at = (SELECT now FROM clock),
           updated_at = (SELECT now FROM clock)
     -- An array of ids: primary-key probes, whatever the planner guesses about `chosen`.
     WHERE t.id = ANY(ARRAY(SELECT id FROM chosen)) AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.attempts, t.max_attempts, t.priority, t.run_at,
              t.timeout_seconds, t.depends_on
), stamp AS (
    INSERT INTO taskq_queue_flow AS f (queue, start_times, start_counts, key_cursor)
    SELECT %(queue)s,
           CASE WHEN (SELECT rate_count FROM lim) IS NULL THEN '{}'::timestamptz[]
                ELSE ARRAY[(SELECT now FROM clock)] END,
           CASE WHEN (SELECT rate_count FROM lim) IS NULL THEN '{}'::int[]
                ELSE ARRAY[c.n] END,
           w.key
      FROM (SELECT count(*)::int AS n FROM claimed) AS c,
           -- The walk's stopping point: the last key it took a task from (none when
           -- the head filled the claim, which leaves the cursor where it was).
           (SELECT (SELECT ch.key FROM chosen ch JOIN claimed cl ON cl.id = ch.id
                     WHERE ch.key IS NOT NULL ORDER BY ch.wrapped DESC, ch.key DESC LIMIT 1)
                   AS key) AS w
     WHERE c.n > 0 AND ((SELECT rate_count FROM lim) IS NOT NULL OR w.key IS NOT NULL)
    ON CONFLICT (queue) DO UPDATE
       SET (start_times, start_counts) = (
               SELECT COALESCE(array_agg(s.t ORDER BY s.t), '{}') || EXCLUDED.start_times,
                      COALESCE(array_agg(s.n ORDER BY s.t), '{}') || EXCLUDED.start_counts
                 FROM unnest(f.start_times, f.start_counts) AS s(t, n)
                WHERE s.t > (SELECT now FROM clock)
                            - COALESCE((SELECT rate_seconds FROM lim), 0) * interval '1 second'),
           key_cursor = COALESCE(EXCLUDED.key_cursor, f.key_cursor),
           updated_at = now()
)
SELECT id, queue, kind, payload::text, attempts, max_attempts,
       greatest(extract(epoch FROM now() - run_at), 0)::float8 AS waited, timeout_seconds,
       (SELECT n FROM room) - (SELECT count(*) FROM claimed) AS room_left, depends_on
  FROM claimed
 ORDER BY priority DESC, run_at, id
"""

# LIMITED_QUEUES' `alone` for one queue, checked again in the transaction of a claim that
# records outcomes: a worker that has gained company since it last read the limits stops
# taking back the room its outcomes free after this claim, not a second later.
STILL_ALONE: LiteralString = "SELECT " + _ALONE.replace("{queue}", "%(queue)s") + " AS alone"

# CLAIM_LIMITED for a queue whose only limit is max_running, without the parts for keys
# and rate windows (their CTEs cost ~0.2 ms per claim even when unused). Chosen by the
# worker from what LIMITED_QUEUES said, so the statement checks it again: if the queue
# has gained a per-key or rate limit since, it claims nothing (the worker then re-reads
# the limits and uses CLAIM_LIMITED). Same columns as CLAIM_LIMITED.
CLAIM_MAX_RUNNING: LiteralString = """
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now  -- as in CLAIM_LIMITED: later than what this claim saw
), lim AS (
    SELECT l.max_running, l.paused
      FROM taskq_queues l
     WHERE l.name = %(queue)s AND l.max_running_per_key IS NULL
       AND (l.rate_limit_count IS NULL OR l.rate_limit_per_seconds IS NULL)
), room AS MATERIALIZED (
    SELECT ((SELECT max_running FROM lim)
            - (SELECT count(*) FROM taskq_tasks t
                WHERE t.status = 'running' AND t.queue = %(queue)s))::int AS n
), chosen AS MATERIALIZED (
    SELECT t.id
      FROM taskq_tasks t
     WHERE t.status = 'queued' AND t.queue = %(queue)s AND t.run_at <= now()
     ORDER BY t.priority DESC, t.run_at, t.id
     -- No registry row of this shape (limits changed, row gone) or paused: nothing.
     LIMIT (SELECT CASE WHEN COALESCE((SELECT paused FROM lim), true) THEN 0
                        ELSE greatest(0, least(%(limit)s::int, (SELECT n FROM room))) END)
), claimed AS (
    UPDATE taskq_tasks t
       SET status = 'running',
           attempts = t.attempts + 1,
           worker_id = %(worker_id)s,
           lease_expires_at = (SELECT now FROM clock) + %(lease)s * interval '1 second',
           started_at = (SELECT now FROM clock),
           updated_at = (SELECT now FROM clock)
     WHERE t.id = ANY(ARRAY(SELECT id FROM chosen)) AND t.status = 'queued'
    RETURNING t.id, t.queue, t.kind, t.payload, t.attempts, t.max_attempts, t.priority, t.run_at,
              t.timeout_seconds, t.depends_on
)
SELECT id, queue, kind, payload::text, attempts, max_attempts,
       greatest(extract(epoch FROM now() - run_at), 0)::float8 AS waited, timeout_seconds,
       (SELECT n FROM room) - (SELECT count(*) FROM claimed) AS room_left, depends_on
  FROM claimed
 ORDER BY priority DESC, run_at, id
"""

# Seconds until the rate window of a queue may have room again (NULL: no rate limit, or
# no start in the window): when the oldest start that still counts leaves the window.
# The worker sleeps that long instead of polling a rate-limited queue.
RATE_WAIT: LiteralString = """
SELECT extract(epoch FROM min(s.t) + max(l.rate_limit_per_seconds) * interval '1 second'
                         - now())::float8 AS wait
  FROM taskq_queues l
  JOIN taskq_queue_flow f ON f.queue = l.name
 CROSS JOIN LATERAL unnest(f.start_times, f.start_counts) AS s(t, n)
 WHERE l.name = %(queue)s AND l.rate_limit_count IS NOT NULL
   AND s.t > now() - l.rate_limit_per_seconds * interval '1 second'
"""

# Extend the leases of tasks this worker still owns; rows not returned were lost. Each row
# says whether its cancel was requested: the fallback when the control notification was
# missed (listener reconnecting, a proxy that drops NOTIFY).
HEARTBEAT: LiteralString = """
UPDATE taskq_tasks t
   SET lease_expires_at = now() + %(lease)s * interval '1 second'
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS h(id, attempt)
 WHERE t.id = h.id AND t.attempts = h.attempt
   AND t.worker_id = %(worker_id)s AND t.status = 'running'
RETURNING t.id, t.cancel_requested_at IS NOT NULL AS cancel
"""

# Record outcomes for many tasks at once. Fencing: a row changes only if this worker still
# owns that attempt, so a worker that lost its lease cannot overwrite the new owner's
# result. `retry` becomes queued with a backoff, or failed when attempts are used up;
# `snooze` becomes queued after the delay and gives its attempt back (counted in snoozes).
# A cancel request wins over any outcome: the SET list reads the cancel column from the
# target row, which under READ COMMITTED is the newest version once a concurrent cancel
# has committed (the cancel's own UPDATE re-checks the status the same way), so either the
# cancel commits first and the task ends cancelled, or the outcome commits first and the
# cancel finds the task finished. Never both.
# The outcomes arrive as one JSON array of [id, attempt, outcome, result, error, delay]
# rows: a single text parameter is far cheaper to send than six typed arrays, and a
# result is already JSON.
FINISH: LiteralString = """
WITH o AS (
    SELECT (e->>0)::uuid AS id, (e->>1)::int AS attempt, e->>2 AS outcome,
           NULLIF(e->3, 'null'::jsonb) AS result, e->>4 AS error, (e->>5)::float8 AS delay
      FROM jsonb_array_elements(%(outcomes)s::jsonb) AS e
), decided AS (
    SELECT t.id,
           CASE WHEN o.outcome = 'retry' AND t.attempts < t.max_attempts THEN 'queued'
                WHEN o.outcome = 'retry' THEN 'failed'
                WHEN o.outcome = 'snooze' THEN 'queued'
                ELSE o.outcome END AS status,
           o.outcome = 'snooze' AS snoozed, o.result, o.error, o.delay
      FROM o CROSS JOIN LATERAL (
            -- One primary-key probe per outcome: the lookup names only the id (LIMIT 1
            -- keeps it a probe), and the fencing conditions are checked on the row found.
            -- Given them here, the planner may scan every running task's lease entry per
            -- outcome instead.
            SELECT t.id, t.attempts, t.max_attempts, t.worker_id, t.status
              FROM taskq_tasks t WHERE t.id = o.id LIMIT 1) AS t
     WHERE t.attempts = o.attempt AND t.worker_id = %(worker_id)s AND t.status = 'running'
)
UPDATE taskq_tasks t
   SET status = CASE WHEN t.cancel_requested_at IS NULL THEN d.status ELSE 'cancelled' END,
       result = CASE WHEN t.cancel_requested_at IS NULL THEN d.result END,
       last_error = CASE WHEN t.cancel_requested_at IS NULL THEN COALESCE(d.error, t.last_error)
                         ELSE 'cancelled while running' END,
       attempts = t.attempts - (d.snoozed AND t.cancel_requested_at IS NULL)::int,
       snoozes = t.snoozes + (d.snoozed AND t.cancel_requested_at IS NULL)::int,
       run_at = CASE WHEN d.status = 'queued' AND t.cancel_requested_at IS NULL
                     THEN now() + d.delay * interval '1 second' ELSE t.run_at END,
       finished_at = CASE WHEN d.status = 'queued' AND t.cancel_requested_at IS NULL
                          THEN NULL ELSE now() END,
       lease_expires_at = NULL,
       updated_at = now()
  FROM decided d
 WHERE t.id = d.id
   -- Workflows (0012): with `plain`, a parent (has_dependents) or a batch member is left
   -- alone, and the worker records it again in a transaction that also releases or
   -- cancels its children (app/taskq/workflows.py). Checked on the newest row version,
   -- so a child submitted while this statement waited for the parent's row lock is seen.
   AND NOT (%(plain)s AND (t.has_dependents OR t.batch_id IS NOT NULL))
RETURNING t.id, t.status, t.queue, t.kind, t.attempts, d.snoozed, t.has_dependents, t.batch_id
"""

# Hand unfinished tasks back on shutdown: queued again at once, and the interrupted attempt
# is not counted against max_attempts (the task did not fail, the worker stopped). A task
# whose cancel was requested ends cancelled instead.
RELEASE: LiteralString = """
UPDATE taskq_tasks t
   SET status = CASE WHEN t.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END,
       attempts = t.attempts - (t.cancel_requested_at IS NULL)::int,
       finished_at = CASE WHEN t.cancel_requested_at IS NULL THEN NULL ELSE now() END,
       lease_expires_at = NULL, run_at = now(), updated_at = now()
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS r(id, attempt)
 WHERE t.id = r.id AND t.attempts = r.attempt
   AND t.worker_id = %(worker_id)s AND t.status = 'running'
RETURNING t.id, t.queue
"""

# Recover tasks whose lease expired (their worker died or hung): back to queued, or failed
# when that was the last attempt, or cancelled when its cancel was requested. SKIP LOCKED
# lets every live worker run the sweep without contending; the batch limit bounds each
# sweep's work.
RECOVER_EXPIRED: LiteralString = """
WITH expired AS (
    SELECT id FROM taskq_tasks
     WHERE status = 'running' AND lease_expires_at < now()
     ORDER BY lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE taskq_tasks t
   SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
       last_error = format('lease expired: worker %%s stopped renewing attempt %%s',
                           t.worker_id, t.attempts),
       finished_at = CASE WHEN t.cancel_requested_at IS NOT NULL OR t.attempts >= t.max_attempts
                          THEN now() END,
       lease_expires_at = NULL,
       run_at = now(),
       updated_at = now()
  FROM expired e
 WHERE t.id = e.id
RETURNING t.id, t.queue, t.kind, t.status, t.worker_id, t.attempts, t.has_dependents, t.batch_id
"""

# Wake workers of the given queues (used after updates, which the insert trigger misses).
NOTIFY_QUEUES: LiteralString = (
    "SELECT pg_notify('" + CHANNEL + "', q) FROM unnest(%(queues)s::text[]) AS q"
)

# The same as a transaction of its own that does not wait for the WAL flush: NOTIFY holds
# a database-wide lock until its commit returns, and a notification is never durable
# anyway. Only for a connection with no transaction open (app/taskq/notifier.py checks).
NOTIFY_QUEUES_NOWAIT: LiteralString = (
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify('" + CHANNEL + "', q)"
    " FROM unnest(%(queues)s::text[]) AS q"
)

# Read one task.
GET_TASK: LiteralString = "SELECT * FROM taskq_tasks WHERE id = %(id)s"

# A page of tasks, newest first (ids are time-ordered), after an optional cursor id.
LIST_TASKS: LiteralString = """
SELECT * FROM taskq_tasks
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s)
   AND (%(kind)s::text IS NULL OR kind = %(kind)s)
   AND (%(cursor)s::uuid IS NULL OR id < %(cursor)s)
 ORDER BY id DESC
 LIMIT %(limit)s
"""

# Cancel a task: a queued one at once; for a running one, record the request (its worker
# stops the attempt and FINISH ends it cancelled). Finished tasks are left alone. Under READ
# COMMITTED a concurrent FINISH that commits first makes this re-check the status and find
# the task finished (see FINISH).
CANCEL: LiteralString = """
UPDATE taskq_tasks
   SET status = CASE WHEN status IN ('queued', 'blocked') THEN 'cancelled' ELSE status END,
       finished_at = CASE WHEN status IN ('queued', 'blocked') THEN now() ELSE finished_at END,
       cancel_requested_at = COALESCE(cancel_requested_at, now()),
       updated_at = now()
 WHERE id = %(id)s AND status IN ('queued', 'running', 'blocked')
RETURNING *
"""

# Run a failed or cancelled task again from scratch. A task with parents that have not
# all succeeded goes back to blocked, counting them (a parent deleted by pruning had
# finished, so it does not count).
RETRY: LiteralString = """
UPDATE taskq_tasks t
   SET status = CASE WHEN w.n > 0 THEN 'blocked' ELSE 'queued' END, blocked_by = w.n,
       cancelled_by = NULL, attempts = 0, run_at = now(), finished_at = NULL,
       result = NULL, cancel_requested_at = NULL, updated_at = now()
  FROM (SELECT count(*)::int AS n
          FROM taskq_task_deps d JOIN taskq_tasks p ON p.id = d.parent_id
         WHERE d.child_id = %(id)s AND p.status <> 'succeeded') AS w
 WHERE t.id = %(id)s AND t.status IN ('failed', 'cancelled')
RETURNING t.*
"""

# Delete one batch of finished tasks older than the retention; SKIP LOCKED so a prune
# never waits on (or blocks) a worker.
PRUNE_BATCH: LiteralString = """
WITH doomed AS (
    SELECT id FROM taskq_tasks
     WHERE status IN ('succeeded', 'failed', 'cancelled')
       AND finished_at < now() - %(older_than)s * interval '1 second'
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM taskq_tasks t USING doomed d WHERE t.id = d.id
    RETURNING t.id, t.has_dependents, t.depends_on IS NOT NULL AS has_parents
), edges AS (
    -- The graph's edges go with their tasks (no foreign keys: see migration 0012).
    DELETE FROM taskq_task_deps e
     WHERE e.parent_id = ANY(ARRAY(SELECT id FROM gone WHERE has_dependents))
        OR e.child_id = ANY(ARRAY(SELECT id FROM gone WHERE has_parents))
)
SELECT count(*) AS n FROM gone
"""

# How many finished tasks PRUNE_BATCH would delete (the CLI's progress bar): a count on
# the finished index.
COUNT_PRUNABLE: LiteralString = """
SELECT count(*) AS n FROM taskq_tasks
 WHERE status IN ('succeeded', 'failed', 'cancelled')
   AND finished_at < now() - %(older_than)s * interval '1 second'
"""

# Task counts per queue and status (the stats view and the CLI's table).
COUNT_BY_QUEUE: LiteralString = """
SELECT queue, status, count(*) AS n FROM taskq_tasks GROUP BY queue, status ORDER BY queue, status
"""

# Planner settings for the read-only statistics below, in their own transaction: their
# cost estimates (nested index scans with large LIMITs) are high enough to trigger JIT
# compilation, which costs ~0.5 s and saves nothing on a query that reads ~10^4 index
# entries; the timeout keeps a scrape or a dashboard refresh from queueing up behind a
# slow database.
STATS_SESSION: LiteralString = """
SELECT set_config('jit', 'off', true), set_config('statement_timeout', %(timeout_ms)s, true)
"""

# Per queue: runnable tasks (run_at has come), scheduled ones (run_at still ahead), and the
# oldest runnable task, read from the ready index alone (index-only scans; finished rows
# are not in it).
# `grp` walks the index's distinct (queue, priority) groups with one index probe each
# (a loose index scan), taking each group's first entry: its smallest run_at. Within a
# group the runnable tasks are a prefix of the index order and the scheduled ones the
# rest, so each count is a range scan of its own entries. Each count visits at most `cap`
# index entries per queue: with a million queued rows a scrape still reads ~cap entries
# per queue, and a count equal to `cap` means "at least cap". `max_groups` bounds the walk.
QUEUE_STATS: LiteralString = """
WITH RECURSIVE grp(queue, priority, run_at, id) AS (
    (SELECT queue, priority, run_at, id FROM taskq_tasks
      WHERE status = 'queued'
      ORDER BY queue, priority DESC, run_at, id LIMIT 1)
    UNION ALL
    SELECT n.queue, n.priority, n.run_at, n.id
      FROM grp g
     CROSS JOIN LATERAL (
           (SELECT t.queue, t.priority, t.run_at, t.id FROM taskq_tasks t
             WHERE t.status = 'queued' AND t.queue = g.queue AND t.priority < g.priority
             ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1)
           UNION ALL
           (SELECT t.queue, t.priority, t.run_at, t.id FROM taskq_tasks t
             WHERE t.status = 'queued' AND t.queue > g.queue
             ORDER BY t.queue, t.priority DESC, t.run_at, t.id LIMIT 1)
           LIMIT 1
     ) n
), groups AS MATERIALIZED (
    SELECT * FROM grp LIMIT %(max_groups)s
)
SELECT q.queue, r.n AS runnable, a.n AS scheduled, o.id AS oldest_id, o.run_at AS oldest_run_at,
       COALESCE(extract(epoch FROM now() - o.run_at), 0)::float8 AS oldest_age_seconds
  FROM (SELECT DISTINCT queue FROM groups) q
 CROSS JOIN LATERAL (
       SELECT count(*) AS n FROM (
           SELECT 1 FROM groups g
            CROSS JOIN LATERAL (
                  SELECT 1 FROM taskq_tasks t
                   WHERE t.status = 'queued' AND t.queue = g.queue AND t.priority = g.priority
                     AND t.run_at <= now()) x
            WHERE g.queue = q.queue
            LIMIT %(cap)s) s) r
 CROSS JOIN LATERAL (
       SELECT count(*) AS n FROM (
           SELECT 1 FROM groups g
            CROSS JOIN LATERAL (
                  SELECT 1 FROM taskq_tasks t
                   WHERE t.status = 'queued' AND t.queue = g.queue AND t.priority = g.priority
                     AND t.run_at > now()) x
            WHERE g.queue = q.queue
            LIMIT %(cap)s) s) a
  LEFT JOIN LATERAL (
       SELECT g.id, g.run_at FROM groups g
        WHERE g.queue = q.queue AND g.run_at <= now()
        ORDER BY g.run_at, g.id LIMIT 1) o ON true
 ORDER BY q.queue
"""

# Blocked tasks per queue (waiting for their parents), from the blocked index (only
# blocked rows are in it); at most `cap` entries are read in all.
COUNT_BLOCKED: LiteralString = """
SELECT queue, count(*) AS n
  FROM (SELECT queue FROM taskq_tasks WHERE status = 'blocked' LIMIT %(cap)s) b
 GROUP BY queue
"""

# Running tasks per queue, from the index of running tasks (only running rows are in it).
COUNT_RUNNING: LiteralString = """
SELECT queue, count(*) AS n FROM taskq_tasks WHERE status = 'running' GROUP BY queue
"""

# Tasks finished in the last `window` seconds, per queue, status and `bucket`-second
# interval, from the finished index. Bounded: only the `budget` most recently finished
# tasks are read, so at high throughput the series covers less than the window and
# `since` (the oldest finish read, when the budget ran out) says from when it is complete.
FINISHED_SERIES: LiteralString = """
WITH recent AS (
    SELECT queue, status, finished_at FROM taskq_tasks
     WHERE status IN ('succeeded', 'failed', 'cancelled')
       AND finished_at > now() - %(window)s * interval '1 second'
     ORDER BY finished_at DESC
     LIMIT %(budget)s
)
SELECT queue, status,
       floor(extract(epoch FROM finished_at) / %(bucket)s)::bigint * %(bucket)s AS bucket,
       count(*) AS n, min(finished_at) AS oldest
  FROM recent
 GROUP BY 1, 2, 3
"""

# The database's clock (statistics are computed against it, not the API host's).
DATABASE_NOW: LiteralString = "SELECT now() AS now"

# The most recent failures (the partial index on failed tasks keeps this a short scan
# however many succeeded tasks are retained).
RECENT_FAILURES: LiteralString = """
SELECT id, queue, kind, attempts, max_attempts, last_error, finished_at, worker_id
  FROM taskq_tasks
 WHERE status = 'failed'
 ORDER BY finished_at DESC
 LIMIT %(limit)s
"""

# ----------------------------------------------------------------------------- worker liveness
# The class (first key) of every worker's liveness lock; the second key is the worker's
# lock_key in taskq_workers. 0x74617371 ("tasq"): a namespace no other user of two-key
# advisory locks in this database is likely to pick.
LIVENESS_LOCK_CLASS = 0x74617371

# Take this worker's liveness lock for as long as its session lives (never waits: the
# key belongs to this worker id alone, and a hash collision only makes a dead worker look
# alive, which leaves its tasks to lease expiry).
LIVENESS_LOCK: LiteralString = (
    "SELECT pg_try_advisory_lock(" + str(LIVENESS_LOCK_CLASS) + ", %(key)s) AS locked"
)

# Register a worker whose liveness lock is held (idempotent: a reconnect registers again).
# Its presence row (WORKER_SEEN) may exist already, without a lock key: that row is the
# one that gains it. A row without a lock key is never taken for dead (NULL NOT IN ...).
REGISTER_WORKER: LiteralString = """
INSERT INTO taskq_workers (id, lock_key) VALUES (%(id)s, %(key)s)
ON CONFLICT (id) DO UPDATE SET lock_key = EXCLUDED.lock_key
"""


# The registered workers whose liveness lock is free (other than the sweeping worker).
# pg_locks is read once (a hashed NOT IN).
_LOCK_FREE: LiteralString = (
    """
    SELECT w.id FROM taskq_workers w
     WHERE w.id <> %(self)s
       AND w.lock_key::oid NOT IN (
           SELECT l.objid FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
              AND l.classid = """
    + str(LIVENESS_LOCK_CLASS)
    + """::oid
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
"""
)

# Workers that look dead: their liveness lock is free. A sweep recovers only those it saw
# dead on its previous sweep too, so that a listener reconnecting (which drops and
# retakes the lock within moments) is never taken for dead.
LOCK_FREE_WORKERS: LiteralString = _LOCK_FREE

# Recover the running tasks of the given workers if their liveness lock is still free:
# their session is gone (killed, host lost), so they will never record those tasks. A
# worker that merely stalls (paused, slow) keeps its session and its lock, and stays
# covered by its leases and fencing; a task whose cancel was requested ends cancelled.
# SKIP LOCKED lets every worker sweep without waiting on another. A dead worker's row is
# deleted once none of its tasks is left running.
# run_at is kept: the task has been runnable all along and goes back to the head of its
# queue, not behind what was enqueued while it ran.
RECOVER_DEAD_WORKERS: LiteralString = (
    """
WITH dead AS (
    SELECT w.id FROM taskq_workers w
     WHERE w.id = ANY(%(ids)s::text[]) AND w.id IN ("""
    + _LOCK_FREE
    + """)
       FOR UPDATE SKIP LOCKED
), orphaned AS (
    SELECT t.id FROM taskq_tasks t JOIN dead ON t.worker_id = dead.id
     WHERE t.status = 'running'
     LIMIT %(limit)s
       FOR UPDATE OF t SKIP LOCKED
), recovered AS (
    UPDATE taskq_tasks t
       SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                         WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
           last_error = format('worker %%s is gone (its session ended) during attempt %%s',
                               t.worker_id, t.attempts),
           finished_at = CASE WHEN t.cancel_requested_at IS NOT NULL
                                OR t.attempts >= t.max_attempts THEN now() END,
           lease_expires_at = NULL,
           updated_at = now()
      FROM orphaned o
     WHERE t.id = o.id
    RETURNING t.id, t.queue, t.kind, t.status, t.worker_id, t.attempts, t.has_dependents,
              t.batch_id
), forgotten AS (
    DELETE FROM taskq_workers w USING dead
     WHERE w.id = dead.id
       AND NOT EXISTS (SELECT 1 FROM taskq_tasks t
                        WHERE t.worker_id = dead.id AND t.status = 'running'
                          AND t.id NOT IN (SELECT id FROM orphaned))
)
SELECT * FROM recovered
"""
)

# A listener's self-check: a notification only this worker's listener waits for. The
# payload is no queue name ('!' is not allowed in one), so other workers ignore it.
PROBE_PREFIX = "!probe "

# Settings of a taskq session: (name, value) pairs, with synchronous_commit raised from
# `off` to `on` unless the session sets it (an accepted task must be on disk whatever the
# server's default; a stricter remote_write or remote_apply is left alone). `local`:
# for the current transaction only, which is what a transaction pooler needs.
SESSION_SETTINGS: LiteralString = """
SELECT set_config(n, v, %(local)s) FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(n, v)
"""
SESSION_SETTINGS_DURABLE: LiteralString = """
SELECT set_config(n, v, %(local)s) FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(n, v)
UNION ALL
SELECT set_config('synchronous_commit', 'on', %(local)s)
 WHERE current_setting('synchronous_commit') = 'off'
"""

# Readiness: this node answers and accepts writes (a read-only database or a standby is
# not where a taskq process can work).
PING_WRITABLE: LiteralString = "SELECT current_setting('transaction_read_only') = 'off' AS writable"


# ------------------------------------------------------------------ schedules (0006)
# Recurring tasks. Each slot's task carries the idempotency key 'schedule:<name>:<slot>',
# so concurrent schedulers (every worker runs one) insert it once: no leader election.

# Every column of a schedule, with the status of the task it created last (the dashboard
# and GET /schedules show it); a primary-key probe per schedule.
_SCHEDULE_COLUMNS = """
s.name, s.cron, s.every_seconds, s.timezone, s.kind, s.payload, s.queue, s.priority,
s.max_attempts, s.timeout_seconds, s.concurrency_key, s.enabled, s.source, s.next_run_at,
s.last_run_at, s.last_task_id, s.created_at, s.updated_at, t.status AS last_task_status
"""

# Create or replace a schedule; `created` tells which. The stored next_run_at is kept when
# the timing (cron, every, timezone) is unchanged and the schedule was enabled: a worker
# re-applying the settings file at start must not skip a slot that came due while it was
# down. Otherwise it is the given one (the next slot after now).
UPSERT_SCHEDULE: LiteralString = """
INSERT INTO taskq_schedules AS s
       (name, cron, every_seconds, timezone, kind, payload, queue, priority, max_attempts,
        timeout_seconds, concurrency_key, enabled, source, next_run_at)
VALUES (%(name)s, %(cron)s, %(every)s, %(timezone)s, %(kind)s, %(payload)s, %(queue)s,
        %(priority)s, %(max_attempts)s, %(timeout_seconds)s, %(concurrency_key)s,
        %(enabled)s, %(source)s, %(next_run_at)s)
ON CONFLICT (name) DO UPDATE
   SET cron = EXCLUDED.cron, every_seconds = EXCLUDED.every_seconds,
       timezone = EXCLUDED.timezone, kind = EXCLUDED.kind, payload = EXCLUDED.payload,
       queue = EXCLUDED.queue, priority = EXCLUDED.priority,
       max_attempts = EXCLUDED.max_attempts, timeout_seconds = EXCLUDED.timeout_seconds,
       concurrency_key = EXCLUDED.concurrency_key, enabled = EXCLUDED.enabled,
       source = EXCLUDED.source,
       next_run_at = CASE
           WHEN s.enabled AND s.next_run_at IS NOT NULL
            AND s.cron IS NOT DISTINCT FROM EXCLUDED.cron
            AND s.every_seconds IS NOT DISTINCT FROM EXCLUDED.every_seconds
            AND s.timezone = EXCLUDED.timezone
           THEN s.next_run_at ELSE EXCLUDED.next_run_at END,
       updated_at = now()
RETURNING (xmax = 0) AS created
"""

# One schedule, or all of them by name.
GET_SCHEDULE: LiteralString = (
    "SELECT"
    + _SCHEDULE_COLUMNS
    + "FROM taskq_schedules s LEFT JOIN taskq_tasks t ON t.id = s.last_task_id"
    + " WHERE s.name = %(name)s"
)
LIST_SCHEDULES: LiteralString = (
    "SELECT"
    + _SCHEDULE_COLUMNS
    + "FROM taskq_schedules s LEFT JOIN taskq_tasks t ON t.id = s.last_task_id ORDER BY s.name"
)

# Delete one schedule (its tasks stay).
DELETE_SCHEDULE: LiteralString = "DELETE FROM taskq_schedules WHERE name = %(name)s RETURNING name"

# Enable or disable a schedule. Enabling starts from the next slot after now (the given
# next_run_at): slots that passed while it was disabled are not caught up.
SET_SCHEDULE_ENABLED: LiteralString = """
UPDATE taskq_schedules
   SET enabled = %(enabled)s,
       next_run_at = CASE WHEN %(enabled)s AND NOT enabled THEN %(next_run_at)s
                          ELSE next_run_at END,
       updated_at = now()
 WHERE name = %(name)s
RETURNING name
"""

# The schedules whose next slot has come, locked for this scheduler; SKIP LOCKED lets the
# other workers' schedulers pass over them instead of waiting (they would find the slot
# enqueued anyway). Runs inside the transaction that enqueues and advances them. The
# database's clock decides what is due, so the workers' own clocks do not matter.
LOCK_DUE_SCHEDULES: LiteralString = """
SELECT name, cron, every_seconds, timezone, kind, payload, queue, priority, max_attempts,
       timeout_seconds, concurrency_key, next_run_at, now() AS db_now
  FROM taskq_schedules
 WHERE enabled AND next_run_at <= now()
 ORDER BY next_run_at
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED
"""

# After enqueueing a slot: remember it and the task, and move to the next slot (NULL:
# the schedule cannot run any more, e.g. its timezone vanished).
ADVANCE_SCHEDULE: LiteralString = """
UPDATE taskq_schedules
   SET last_run_at = COALESCE(%(slot)s::timestamptz, last_run_at),
       last_task_id = COALESCE(%(task_id)s::uuid, last_task_id),
       next_run_at = %(next_run_at)s
 WHERE name = %(name)s
"""

# Seconds until the earliest enabled schedule is due (negative: overdue), by the
# database's clock; NULL when no schedule is enabled. Reads the due index's first entry.
NEXT_SCHEDULE_DUE: LiteralString = """
SELECT extract(epoch FROM min(next_run_at) - now())::float8 AS seconds
  FROM taskq_schedules WHERE enabled
"""

# Schedules owned by the settings file that it no longer lists.
DELETE_FILE_SCHEDULES_EXCEPT: LiteralString = """
DELETE FROM taskq_schedules
 WHERE source = 'file' AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""

# The database's clock, for computing a new schedule's next slot.
SCHEDULE_NOW: LiteralString = "SELECT now() AS now"

# Serialises settings-file applies (workers starting together apply the same file).
LOCK_SETTINGS_APPLY: LiteralString = (
    "SELECT pg_advisory_xact_lock(hashtextextended('taskq settings file', 0))"
)


# ------------------------------------------------------------------ queue registry (0005, 0006)
# Queues with settings have a row in taskq_queues; paused queues are skipped by CLAIM.

# Pause or resume a queue, creating its row if needed; the row's source is kept.
SET_QUEUE_PAUSED: LiteralString = """
INSERT INTO taskq_queues AS q (name, paused, paused_at)
VALUES (%(name)s, %(paused)s, CASE WHEN %(paused)s THEN now() END)
ON CONFLICT (name) DO UPDATE
   SET paused = EXCLUDED.paused,
       paused_at = CASE WHEN EXCLUDED.paused THEN COALESCE(q.paused_at, now()) END,
       updated_at = now()
RETURNING name, paused, paused_at, source
"""

# The settings file's queue settings; a setting the file leaves out keeps its value.
UPSERT_FILE_QUEUE: LiteralString = """
INSERT INTO taskq_queues AS q (name, paused, paused_at, source)
VALUES (%(name)s, COALESCE(%(paused)s, false), CASE WHEN %(paused)s THEN now() END, 'file')
ON CONFLICT (name) DO UPDATE
   SET paused = COALESCE(%(paused)s, q.paused),
       paused_at = CASE WHEN COALESCE(%(paused)s, q.paused)
                        THEN COALESCE(q.paused_at, now()) END,
       source = 'file',
       updated_at = now()
"""

# Queue rows owned by the settings file that it no longer lists.
DELETE_FILE_QUEUES_EXCEPT: LiteralString = """
DELETE FROM taskq_queues
 WHERE source = 'file' AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""

# Every queue row (settings), by name.
LIST_QUEUE_SETTINGS: LiteralString = """
SELECT name, paused, paused_at, source, created_at, updated_at FROM taskq_queues ORDER BY name
"""

# Workers seen within `fresh` seconds, per queue they serve.
WORKERS_PER_QUEUE: LiteralString = """
SELECT q AS queue, count(*) AS n
  FROM taskq_workers w CROSS JOIN LATERAL unnest(w.queues) AS q
 WHERE w.seen_at > now() - %(fresh)s * interval '1 second'
 GROUP BY q
"""

# A worker says it is alive and which queues it serves; rows of workers gone for an hour
# are deleted on the way (any worker does it; there are few).
WORKER_SEEN: LiteralString = """
WITH gone AS (
    DELETE FROM taskq_workers WHERE seen_at < now() - interval '1 hour'
)
INSERT INTO taskq_workers (id, queues) VALUES (%(id)s, %(queues)s)
ON CONFLICT (id) DO UPDATE SET queues = EXCLUDED.queues, seen_at = now()
"""

# A worker that stops says so.
WORKER_GONE: LiteralString = "DELETE FROM taskq_workers WHERE id = %(id)s"

# Create or change a queue's limits; each `set_*` flag says whether that limit was given
# (absent limits stay as they are, given ones may be NULL: removed). A new row belongs to
# the API (source 'api').
SET_LIMITS: LiteralString = """
INSERT INTO taskq_queues AS l (name, max_running, max_running_per_key, rate_limit_count,
                               rate_limit_per_seconds)
VALUES (%(queue)s, %(max_running)s, %(max_running_per_key)s, %(rate_count)s, %(rate_seconds)s)
ON CONFLICT (name) DO UPDATE
   SET max_running = CASE WHEN %(set_max_running)s THEN EXCLUDED.max_running
                          ELSE l.max_running END,
       max_running_per_key = CASE WHEN %(set_per_key)s THEN EXCLUDED.max_running_per_key
                                  ELSE l.max_running_per_key END,
       rate_limit_count = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_limit_count
                               ELSE l.rate_limit_count END,
       rate_limit_per_seconds = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_limit_per_seconds
                                     ELSE l.rate_limit_per_seconds END,
       updated_at = now()
"""

# Per registry row (or one queue; or only those with limits): its limits, running tasks
# (running index), starts in the rate window, runnable tasks (up to `cap`; skipped when
# the caller has them from QUEUE_STATS), and runnable tasks whose key is at its
# max_running_per_key (up to `cap`; keyed ready index, one range per busy key).
QUEUE_LIMITS: LiteralString = (
    """
SELECT l.name AS queue, l.max_running, l.max_running_per_key, l.rate_limit_count,
       l.rate_limit_per_seconds, l.updated_at,
       r.n AS running, COALESCE(s.n, 0) AS window_starts, w.n AS runnable, k.n AS held_by_key
  FROM taskq_queues l
 CROSS JOIN LATERAL (
       SELECT count(*) AS n FROM taskq_tasks t
        WHERE t.status = 'running' AND t.queue = l.name) r
  LEFT JOIN LATERAL (
       SELECT sum(x.n) AS n
         FROM taskq_queue_flow f, unnest(f.start_times, f.start_counts) AS x(t, n)
        WHERE f.queue = l.name AND l.rate_limit_count IS NOT NULL
          AND x.t > now() - l.rate_limit_per_seconds * interval '1 second') s ON true
 CROSS JOIN LATERAL (
       SELECT count(*) AS n FROM (
           SELECT 1 FROM taskq_tasks t
            WHERE %(count_runnable)s
              AND t.status = 'queued' AND t.queue = l.name AND t.run_at <= now()
            LIMIT %(cap)s) x) w
 CROSS JOIN LATERAL (
       SELECT count(*) AS n FROM (
           SELECT 1
             FROM (SELECT t.concurrency_key AS key FROM taskq_tasks t
                    WHERE t.status = 'running' AND t.queue = l.name
                      AND t.concurrency_key IS NOT NULL AND l.max_running_per_key IS NOT NULL
                    GROUP BY t.concurrency_key
                   HAVING count(*) >= l.max_running_per_key) AS busy
            CROSS JOIN LATERAL (
                  SELECT 1 FROM taskq_tasks t
                   WHERE t.status = 'queued' AND t.queue = l.name
                     AND t.concurrency_key = busy.key AND t.run_at <= now()) AS q
            LIMIT %(cap)s) x) k
 WHERE (%(queue)s::text IS NULL OR l.name = %(queue)s)
   AND (NOT %(only_limited)s OR """
    + LIMITED
    + """)
 ORDER BY l.name
"""
)


# ------------------------------------------------------------------ workflows (0012)
# Tasks that wait for other tasks, and batches with a callback (app/taskq/workflows.py).
# A child is `blocked` with blocked_by = its unfinished parents; every parent carries
# has_dependents. The worker records a parent's outcome (and a batch member's) in a
# transaction that also runs RELEASE_CHILDREN / CANCEL_DEPENDENTS / the batch statements,
# so a crash never separates an outcome from its consequences. Rows are always locked in
# id order (children, batches), so two workers finishing parents of the same child wait
# for each other instead of deadlocking.

# Lock the existing parents a submit names, and mark them as having dependents; their
# status as locked decides the child's (succeeded: does not count; failed or cancelled:
# the child is cancelled at once). Under the row lock, a parent that finishes meanwhile
# is either seen finished here (it committed first) or sees the child (FINISH's `plain`
# check and the release statement run after this commits).
LOCK_PARENTS: LiteralString = """
WITH p AS (
    SELECT id, status, has_dependents FROM taskq_tasks
     WHERE id = ANY(%(ids)s::uuid[])
     ORDER BY id
       FOR UPDATE
), marked AS (
    UPDATE taskq_tasks t SET has_dependents = true
      FROM p WHERE t.id = p.id AND NOT p.has_dependents
)
SELECT id, status FROM p
"""

# Insert the tasks of a graph (INSERT_TASKS with the workflow columns). depends_on comes
# as array literals ('{id,id}') in a text[]: PostgreSQL has no ragged arrays.
INSERT_GRAPH_TASKS: LiteralString = """
INSERT INTO taskq_tasks (id, queue, kind, payload, priority, run_at, max_attempts, idempotency_key,
                         timeout_seconds, concurrency_key, status, blocked_by, has_dependents,
                         depends_on, ref, batch_id, last_error, cancelled_by, finished_at)
SELECT i.id, i.queue, i.kind, i.payload, i.priority,
       COALESCE(i.run_at, now() + i.delay * interval '1 second'), i.max_attempts, i.key,
       i.timeout, i.ckey, i.status, i.blocked_by, i.has_dependents, i.depends_on::uuid[], i.ref,
       %(batch_id)s::uuid, i.error, i.cancelled_by,
       CASE WHEN i.status = 'cancelled' THEN now() END
  FROM unnest(%(ids)s::uuid[], %(queues)s::text[], %(kinds)s::text[], %(payloads)s::jsonb[],
              %(priorities)s::int[], %(run_ats)s::timestamptz[], %(delays)s::float8[],
              %(max_attempts)s::int[], %(keys)s::text[], %(timeouts)s::float8[],
              %(concurrency_keys)s::text[], %(statuses)s::text[], %(blocked_by)s::int[],
              %(has_dependents)s::bool[], %(depends_on)s::text[], %(refs)s::text[],
              %(errors)s::text[], %(cancelled_by)s::uuid[])
       AS i(id, queue, kind, payload, priority, run_at, delay, max_attempts, key, timeout, ckey,
            status, blocked_by, has_dependents, depends_on, ref, error, cancelled_by)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *, true AS created
"""

# The edges of a graph (parent, child), one statement for the whole submit.
INSERT_DEPS: LiteralString = """
INSERT INTO taskq_task_deps (parent_id, child_id)
SELECT * FROM unnest(%(parents)s::uuid[], %(children)s::uuid[])
ON CONFLICT DO NOTHING
"""

# A new batch and its callback.
INSERT_BATCH: LiteralString = """
INSERT INTO taskq_batches (id, on_complete_kind, on_complete_payload, on_complete_queue, total)
VALUES (%(id)s, %(kind)s, %(payload)s, %(queue)s, %(total)s)
"""

# Parents succeeded: each blocked child counts them off, and runs (queued, runnable now
# or at its own later run_at) when none is left. Children are locked in id order first;
# the UPDATE then reads each child's newest blocked_by (another worker may have counted
# off a different parent a moment ago), so concurrent releases never lose a count.
RELEASE_CHILDREN: LiteralString = """
WITH n AS (
    SELECT d.child_id AS id, count(*)::int AS n
      FROM taskq_task_deps d
     WHERE d.parent_id = ANY(%(ids)s::uuid[])
     GROUP BY d.child_id
), locked AS (
    SELECT t.id FROM taskq_tasks t
     WHERE t.id = ANY(ARRAY(SELECT id FROM n)) AND t.status = 'blocked'
     ORDER BY t.id
       FOR UPDATE
)
UPDATE taskq_tasks t
   SET blocked_by = greatest(t.blocked_by - n.n, 0),
       status = CASE WHEN t.blocked_by - n.n <= 0 THEN 'queued' ELSE 'blocked' END,
       run_at = CASE WHEN t.blocked_by - n.n <= 0 THEN greatest(t.run_at, now())
                     ELSE t.run_at END,
       updated_at = now()
  FROM n
 WHERE t.id = n.id AND t.id IN (SELECT id FROM locked) AND t.status = 'blocked'
RETURNING t.id, t.queue, t.status
"""

# Parents failed (for good) or were cancelled: their blocked descendants are cancelled,
# transitively, each naming the parent it waited for; cancelled_by remembers the parent
# whose end started it (retrying that one re-opens them: REOPEN_DEPENDENTS).
CANCEL_DEPENDENTS: LiteralString = """
WITH RECURSIVE walk(id, parent, root) AS (
    SELECT d.child_id, d.parent_id, d.parent_id
      FROM taskq_task_deps d
     WHERE d.parent_id = ANY(%(ids)s::uuid[])
    UNION
    SELECT d.child_id, d.parent_id, w.root
      FROM walk w
      JOIN taskq_task_deps d ON d.parent_id = w.id
      JOIN taskq_tasks c ON c.id = w.id AND c.status = 'blocked'
), pick AS (
    SELECT DISTINCT ON (w.id) w.id, w.parent, w.root FROM walk w ORDER BY w.id, w.root, w.parent
), locked AS (
    SELECT t.id FROM taskq_tasks t
     WHERE t.id = ANY(ARRAY(SELECT id FROM pick)) AND t.status = 'blocked'
     ORDER BY t.id
       FOR UPDATE
)
UPDATE taskq_tasks t
   SET status = 'cancelled',
       finished_at = now(),
       cancelled_by = p.root,
       last_error = format('cancelled: dependency %%s %%s', p.parent,
                           CASE WHEN p.parent = p.root
                                 AND (SELECT r.status FROM taskq_tasks r WHERE r.id = p.root)
                                     = 'failed'
                                THEN 'failed' ELSE 'was cancelled' END),
       updated_at = now()
  FROM pick p
 WHERE t.id = p.id AND t.id IN (SELECT id FROM locked) AND t.status = 'blocked'
RETURNING t.id, t.queue, t.batch_id
"""

# A retried parent re-opens what its end cancelled: blocked again, counting the parents
# that have not succeeded (the retried one among them, and re-opened ones in between).
REOPEN_DEPENDENTS: LiteralString = """
WITH r AS (
    SELECT t.id FROM taskq_tasks t
     WHERE t.cancelled_by = %(id)s AND t.status = 'cancelled'
     ORDER BY t.id
       FOR UPDATE
), n AS (
    SELECT r.id, count(p.id)::int AS n
      FROM r
      LEFT JOIN taskq_task_deps d ON d.child_id = r.id
      LEFT JOIN taskq_tasks p ON p.id = d.parent_id AND p.status <> 'succeeded'
     GROUP BY r.id
)
UPDATE taskq_tasks t
   SET status = CASE WHEN n.n > 0 THEN 'blocked' ELSE 'queued' END,
       blocked_by = n.n, cancelled_by = NULL, finished_at = NULL, last_error = NULL,
       cancel_requested_at = NULL, run_at = now(), updated_at = now()
  FROM n
 WHERE t.id = n.id
RETURNING t.id, t.queue, t.status
"""

# Lock the open batches among these (id order): the completion check below then runs in
# a new statement, whose snapshot includes every member finished by a transaction that
# held the lock before. Every path that finishes a member takes the lock afterwards, so
# the last one to take it sees every member final.
LOCK_BATCHES: LiteralString = """
SELECT id FROM taskq_batches
 WHERE id = ANY(%(ids)s::uuid[]) AND completed_at IS NULL
 ORDER BY id
   FOR UPDATE
"""

# Complete the batches whose members are all final (one probe of the open-members
# index each): completed_at is set and the on_complete task inserted in one statement,
# under the lock taken by LOCK_BATCHES, so the callback is enqueued exactly once. Its
# payload is the batch's on_complete payload plus batch_id and the counts by status.
COMPLETE_BATCHES: LiteralString = """
WITH done AS MATERIALIZED (
    SELECT b.id, b.on_complete_kind AS kind, b.on_complete_payload AS payload,
           b.on_complete_queue AS queue,
           CASE WHEN b.on_complete_kind IS NOT NULL THEN taskq_uuid_v7() END AS task_id
      FROM taskq_batches b
     WHERE b.id = ANY(%(ids)s::uuid[]) AND b.completed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM taskq_tasks t
                        WHERE t.batch_id = b.id AND t.status IN ('blocked', 'queued', 'running'))
), counted AS (
    SELECT d.id,
           jsonb_build_object(
               'succeeded', count(*) FILTER (WHERE t.status = 'succeeded'),
               'failed', count(*) FILTER (WHERE t.status = 'failed'),
               'cancelled', count(*) FILTER (WHERE t.status = 'cancelled')) AS counts
      FROM done d JOIN taskq_tasks t ON t.batch_id = d.id
     GROUP BY d.id
), callback AS (
    INSERT INTO taskq_tasks (id, queue, kind, payload)
    SELECT d.task_id, d.queue, d.kind,
           COALESCE(d.payload, '{}'::jsonb)
           || jsonb_build_object('batch_id', d.id, 'counts', c.counts)
      FROM done d JOIN counted c ON c.id = d.id
     WHERE d.task_id IS NOT NULL
)
UPDATE taskq_batches b
   SET completed_at = now(), on_complete_task_id = d.task_id
  FROM done d
 WHERE b.id = d.id
RETURNING b.id, d.queue, d.task_id
"""

# A batch's progress: its row and its members by status (the batch index).
GET_BATCH: LiteralString = """
SELECT b.id, b.total, b.created_at, b.completed_at, b.on_complete_kind, b.on_complete_queue,
       b.on_complete_task_id,
       COALESCE((SELECT jsonb_object_agg(s.status, s.n)
                   FROM (SELECT t.status, count(*) AS n FROM taskq_tasks t
                          WHERE t.batch_id = b.id GROUP BY t.status) s), '{}'::jsonb) AS counts
  FROM taskq_batches b
 WHERE b.id = %(id)s
"""

# A task's children with their states (GET /tasks/{id}, the dashboard, `taskq status`).
DEPENDENTS: LiteralString = """
SELECT t.id, t.kind, t.status, t.ref FROM taskq_task_deps d JOIN taskq_tasks t ON t.id = d.child_id
 WHERE d.parent_id = %(id)s
 ORDER BY t.id
 LIMIT %(limit)s
"""

# Tasks by id with their states (a task's parents).
TASK_STATES: LiteralString = """
SELECT id, kind, status, ref FROM taskq_tasks WHERE id = ANY(%(ids)s::uuid[]) ORDER BY id
"""

# The results of the parents of a claimed batch, by id (and ref): one statement per claim.
PARENT_RESULTS: LiteralString = """
SELECT id, ref, result::text AS result FROM taskq_tasks WHERE id = ANY(%(ids)s::uuid[])
"""
