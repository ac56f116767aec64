"""The peers' worker processes and enqueue clients (pgqueuer, procrastinate)."""
