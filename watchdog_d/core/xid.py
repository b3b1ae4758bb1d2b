"""NVIDIA Xid codes the agent acts on: what each means and what to do (our own words,
after NVIDIA's Xid catalogue). A critical Xid on a GPU a rank uses is a fatal ``gpu_xid``
finding on that rank; any other Xid is logged and shown in status, never a verdict."""
from __future__ import annotations

# xid -> (meaning, remedy)
CRITICAL: dict[int, tuple[str, str]] = {
    13: ("graphics engine exception (often an out-of-bounds access in a kernel)",
         "rerun once; if it repeats on the same code, look for an illegal memory access "
         "(compute-sanitizer); if it follows the GPU across jobs, drain the node"),
    31: ("GPU memory page fault (a kernel touched an address it does not own)",
         "rerun once; if it repeats on the same code it is a software bug (CUDA_LAUNCH_BLOCKING=1 "
         "to find the kernel); if it follows the GPU, drain the node"),
    43: ("the GPU stopped processing a channel (an application fault reset it)",
         "restart the job; if it repeats on this GPU, reset the GPU"),
    48: ("double-bit ECC error in GPU memory: data was lost",
         "restart the job on other GPUs; reset this GPU before reuse; repeated: replace it"),
    63: ("a memory row was marked for remapping (ECC)",
         "let the job end and reset the GPU to activate the remap"),
    64: ("the GPU failed to record a row remap or page retirement",
         "drain the node and have the GPU checked (field diagnostics, RMA)"),
    74: ("NVLink error", "drain the node; reset the GPUs, then check the NVLink/NVSwitch fabric"),
    79: ("the GPU has fallen off the bus (no longer reachable over PCIe)",
         "drain the node and reboot it; repeated: check PCIe, power and cooling"),
    92: ("high single-bit ECC error rate", "let the job end, reset the GPU; repeated: replace it"),
    94: ("contained ECC error: the processes on this GPU were affected",
         "restart the job; reset the GPU when it is idle"),
    95: ("uncontained ECC error: every process on this GPU was affected",
         "drain the node and reset the GPU before any reuse"),
    119: ("GSP firmware RPC timeout: the GPU stopped answering the driver",
          "reset the GPU or reboot the node; repeated: update the driver"),
    120: ("GSP firmware error", "reset the GPU or reboot the node; repeated: update the driver"),
    154: ("the driver asks for a recovery action on this GPU (reset, reboot or drain)",
          "do what `nvidia-smi -q` shows under recovery action before reusing the GPU"),
}


def is_critical(xid: int) -> bool:
    return xid in CRITICAL


def meaning(xid: int) -> tuple[str, str]:
    """(meaning, remedy) of an Xid; a generic pair for one not in the table."""
    return CRITICAL.get(xid, (f"Xid {xid}", "see NVIDIA's Xid catalogue; no action taken"))


# NVML_GPU_RECOVERY_ACTION_* -> what it asks for (0: none)
RECOVERY_ACTIONS = {0: "none", 1: "gpu_reset", 2: "node_reboot", 3: "drain_p2p",
                    4: "drain_and_reset", 5: "recover_imex_domain", 6: "bus_reset",
                    7: "system_reboot"}
