"""The wire between processes: the generated gRPC code (``watchdog_pb2*``, regenerate with
``make proto``), the pb <-> core conversions, gRPC channel/server plumbing, and the agent's
unix socket (its messages and their transport)."""
