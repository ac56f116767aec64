"""taskq: a task queue on PostgreSQL and nothing else.

The library API is what this module exports; everything else is internal:

    import taskq

    @taskq.handler("send_email")
    def send_email(payload): ...

    with psycopg.connect(url) as conn, conn.transaction():
        taskq.enqueue(conn, "send_email", {"to": "a@example.com"})
"""

from taskq.errors import NonRetryableError
from taskq.handlers import TaskContext, handler
from taskq.models import Task, TaskSpec
from taskq.queue import enqueue, enqueue_many

__version__ = "0.1.0"

__all__ = [
    "NonRetryableError",
    "Task",
    "TaskContext",
    "TaskSpec",
    "__version__",
    "enqueue",
    "enqueue_many",
    "handler",
]
