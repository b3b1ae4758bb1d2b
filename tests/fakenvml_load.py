"""Load tests/fakenvml/pynvml.py in-process (the real pynvml may be imported already)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

FAKE_DIR = Path(__file__).parent / "fakenvml"


def load_fake():
    """The fake module, loaded once per test session under its own name."""
    import sys

    mod = sys.modules.get("wd_fake_pynvml")
    if mod is None:
        spec = importlib.util.spec_from_file_location("wd_fake_pynvml", FAKE_DIR / "pynvml.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["wd_fake_pynvml"] = mod
        spec.loader.exec_module(mod)
    return mod


def write(path: Path, data: dict) -> None:
    """The fake's JSON, replaced at once (a reader never sees half of it), with a new mtime."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
