"""Generated gRPC code (do not edit; regenerate with ``make proto``)."""
