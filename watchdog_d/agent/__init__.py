"""One per node (``watchdog-d agent``, or embedded in ``watchdog-d run``): observes the
ranks' beacons, processes and logs and reports them to the coordinator. Never decides."""
