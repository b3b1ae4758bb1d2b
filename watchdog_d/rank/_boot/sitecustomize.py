"""Put on PYTHONPATH by ``watchdog-d run``: boots the rank beacon in every rank.

It then hands over to the next ``sitecustomize`` on the path, if the
environment has one of its own.
"""
import os
import sys

if os.environ.get("WATCHDOG_D_BEACON_DIR") and "RANK" in os.environ:
    try:
        try:
            from watchdog_d.rank import api as _wd_rank
        except ImportError:
            # the job runs another interpreter: borrow just our package (stdlib-only
            # on the rank side), not the rest of the watchdog's site-packages
            _pkg_parent = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
            sys.path.insert(0, _pkg_parent)
            try:
                from watchdog_d.rank import api as _wd_rank
            finally:
                sys.path.remove(_pkg_parent)
        _wd_rank.boot()
    except Exception:
        pass

_here = os.path.dirname(os.path.abspath(__file__))
_saved = list(sys.path)
_me = sys.modules.pop("sitecustomize", None)
try:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    import sitecustomize  # noqa: F401  (the environment's own, if any)
except ImportError:
    pass
finally:
    sys.path[:] = _saved
    if _me is not None:   # the import system expects to find this module when we return
        sys.modules["sitecustomize"] = _me
