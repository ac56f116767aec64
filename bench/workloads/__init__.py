"""One module per workload of issue 4: drain, latency, ingest, ceiling, scale."""
