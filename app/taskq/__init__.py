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
from taskq.registry import pause as pause_queue
from taskq.registry import resume as resume_queue
from taskq.schedules import ScheduleSpec
from taskq.schedules import delete as delete_schedule
from taskq.schedules import put as set_schedule

__version__ = "0.1.0"

__all__ = [
    "NonRetryableError",
    "ScheduleSpec",
    "Task",
    "TaskContext",
    "TaskSpec",
    "__version__",
    "delete_schedule",
    "enqueue",
    "enqueue_many",
    "handler",
    "pause_queue",
    "resume_queue",
    "set_schedule",
]
