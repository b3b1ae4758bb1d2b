"""The rank's side of the end of training: destroy_process_group() of the default group
opens a ``shutdown`` section that stays open until the process exits; a user's section
closing meanwhile leaves it open; a new init_process_group() (a script in phases) ends
it; destroying a subgroup is not the end. A real torch process, gloo, world of one."""
from __future__ import annotations

import json
import socket

from wdtest_helpers import rank_env, start_rank

CODE = """
    import json, os
    import torch.distributed as dist
    import watchdog_d
    from watchdog_d.rank import beacon
    slot = beacon.slot_path(os.environ["WATCHDOG_D_BEACON_DIR"], 0)
    seen = {}
    def look(name):
        v = beacon.read_slot(slot)
        seen[name] = [v.section, v.section_timeout]
    dist.init_process_group("gloo", rank=0, world_size=1)
    sub = dist.new_group([0])
    dist.destroy_process_group(sub)
    look("subgroup destroyed")
    dist.destroy_process_group()
    look("destroyed")
    with watchdog_d.section("upload", timeout=60):
        look("upload")
    look("after upload")
    dist.init_process_group("gloo", rank=0, world_size=1)
    look("init again")
    dist.destroy_process_group()
    look("destroyed again")
    print(json.dumps(seen))
"""


def test_destroy_process_group_begins_the_end_of_training(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = rank_env(tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   WATCHDOG_D_SHUTDOWN_TIMEOUT="123", OMP_NUM_THREADS="1")
    proc = start_rank(CODE, env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    shutdown = ["shutdown: destroy_process_group", 123.0]
    assert seen == {"subgroup destroyed": ["", 0.0], "destroyed": shutdown,
                    "upload": ["upload", 60.0], "after upload": shutdown,
                    "init again": ["", 0.0], "destroyed again": shutdown}, seen
