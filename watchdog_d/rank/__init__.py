"""Inside every training process: the beacon writer, the automatic hooks, the boot and
the per-rank log tee. Standard library only; never imports grpc or torch."""
