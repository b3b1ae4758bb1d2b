"""``watchdog-d demo``: a small real torchrun job (``demo.train``) guarded on this CPU."""
