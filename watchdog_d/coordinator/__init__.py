"""One per cluster (``watchdog-d coordinator``, or embedded): the shell around the pure
core that decides. gRPC in, verbs out, alerts, the incident store, status and metrics."""
