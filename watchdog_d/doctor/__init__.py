"""``watchdog-d doctor`` and ``watchdog-d run --preflight``: is this node fit to run a job?

A place of its own (not ``agent/``): it runs on a node, before a job, as the job's user,
in the user's command (``doctor``) or in the wrapper (``--preflight``), never in a daemon;
and it may do what the agent must not (ask torch, in a child process). Modules by area:
``check`` (the result and the time-bounded runner), ``system`` (python, /dev/shm, limits,
disks, clock), ``nccl`` (NCCL's environment), ``gpu`` (torch, driver, GPUs), ``reach``
(coordinator, MASTER_ADDR), ``report`` (which checks, rendering, exit status).
"""
