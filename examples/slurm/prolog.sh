#!/bin/bash
# Slurm Prolog (slurm.conf: Prolog=/etc/slurm/prolog.d/watchdog-d.sh): before a job
# starts on this node, the node's own checks. An error (exit 2) makes the prolog fail:
# Slurm drains the node and requeues the job elsewhere, before any GPU time is spent.
# Warnings (exit 1) are logged, the job starts. Bounded: Slurm's PrologEpilogTimeout.
out=$(watchdog-d doctor 2>&1)
rc=$?
if [ "$rc" -ge 2 ]; then
    logger -t watchdog-d-prolog "node failed its checks: $(echo "$out" | grep -i error | head -3 | tr '\n' ' ')"
    exit 1
fi
[ "$rc" -eq 1 ] && logger -t watchdog-d-prolog "warnings: $(echo "$out" | grep -i warn | head -3 | tr '\n' ' ')"
exit 0
