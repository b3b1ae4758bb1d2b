"""Every NVML call the agent makes, on the GPUs of this machine, and what each read.

    python integration/gpu_smoke.py        # no driver / no GPU: "no NVML: <reason>", exit 0

Not a pytest test: run it by hand on a GPU node (H100/H200) to check that the agent's
NVML reads (agent/nvml.py, agent/gpus.py) work against the real driver.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watchdog_d.agent.gpus import WAIT_MS, GpuSampler  # noqa: E402
from watchdog_d.agent.nvml import Failed, Nvml, Off  # noqa: E402


def main() -> int:
    try:
        nvml = Nvml.open()
    except Off as e:
        print(f"no NVML: {e}")
        return 0
    try:
        print("driver:", nvml.call("driver", "nvmlSystemGetDriverVersion"))
    except Failed as e:
        print("driver: -", e.why, e.detail)
    t0 = time.monotonic()
    sampler = GpuSampler(nvml)
    for g in sampler.sample():
        print(g)
    print(f"sample of {len(sampler.devices)} GPU(s): {time.monotonic() - t0:.3f} s")
    for i, pids in sorted(sampler.procs.items()):
        print(f"gpu {i} compute processes: {sorted(pids)}")
    lib = nvml.lib
    try:
        es = nvml.call("xid_events", "nvmlEventSetCreate", lane="events")
        for d in sampler.devices:
            try:
                nvml.call("xid_events", "nvmlDeviceRegisterEvents", d.handle,
                          lib.nvmlEventTypeXidCriticalError, es, lane="events")
                print(f"gpu {d.index}: Xid events registered")
            except Failed as e:
                print(f"gpu {d.index}: Xid events not registered: {e.why} {e.detail}")
        try:
            data = nvml.call("xid_wait", "nvmlEventSetWait_v2", es, WAIT_MS, lane="events",
                             timeout_s=WAIT_MS / 1000 + nvml.timeout_s)
            print(f"Xid event: {data.eventData} on {data.device}")
        except Failed as e:
            print(f"event wait ({WAIT_MS} ms): {e.why}" + (" (nothing happened: normal)" if e.why == "timeout" else ""))
        nvml.call("xid_events", "nvmlEventSetFree", es, lane="events")
    except Failed as e:
        print("Xid events: -", e.why, e.detail)
    nvml.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
