#!/bin/bash
# Slurm Epilog (slurm.conf: Epilog=/etc/slurm/epilog.d/watchdog-d.sh): watchdog-d stops
# every process of a job it tore down and leaves nothing behind, so there is nothing to
# kill here. What an epilog may still do: remove the beacons of the job's user when they
# have no job left on the node (a wrapper killed by SIGKILL cannot clean up after itself).
uid=$(id -u "$SLURM_JOB_USER" 2>/dev/null) || exit 0
if ! pgrep -u "$uid" -f "watchdog-d run" >/dev/null; then
    rm -rf "/dev/shm/watchdog-d-$uid"
fi
exit 0
