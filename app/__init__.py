"""taskq: a task queue on PostgreSQL and nothing else."""

__version__ = "0.1.0"
