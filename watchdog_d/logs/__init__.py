"""Reading what ranks print: the fingerprint catalogue (and its C prefilter), tailing
rotated log files exactly once, ``watchdog-d diagnose``, and redaction of secrets."""
