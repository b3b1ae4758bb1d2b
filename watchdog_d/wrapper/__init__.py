"""``watchdog-d run``, as the job's owner: launches the job, obeys the node's agent,
tears down and relaunches, chooses the checkpoint to resume from."""
