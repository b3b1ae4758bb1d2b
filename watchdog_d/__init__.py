"""watchdog-d: a watchdog for distributed PyTorch training.

Inside a training process this module is the whole API, and it is cheap to
import (no grpc, no torch):

    import watchdog_d
    watchdog_d.step()                       # or step(n); automatic with an optimizer
    with watchdog_d.section("checkpoint", timeout=900):
        save()
    watchdog_d.checkpoint_saved(path, step)

Outside a job launched by ``watchdog-d run`` every call is a no-op.
"""
from .rank.api import checkpoint_saved, section, step

__version__ = "0.1.0"
__all__ = ["step", "section", "checkpoint_saved", "__version__"]
