"""Automatic hooks: the optimizer step, and sections around the known long pauses.

Nothing is imported here: each hook waits for the training code to import its library
(a meta-path finder wraps that one module's loader, then steps aside), so a job that
never imports safetensors never loads it. A hook changes nothing on the step path: the
step hook is torch's own global optimizer post-hook, and a guarded function costs two
beacon writes per call, on calls that take seconds.

Automatic sections (DESIGN §2, "pauses are not stalls"), opened on the main thread only
(a save in a background thread does not hold training up):
    checkpoint   torch.save / torch.load, safetensors.torch save_file / load_file / save /
                 load, torch.distributed.checkpoint save / load / async_save (its staging),
                 transformers' Trainer._save_checkpoint and _load_from_checkpoint,
                 Lightning's Trainer.save_checkpoint
    evaluation   transformers' Trainer.evaluate, Lightning's evaluation loop
    shutdown     torch.distributed.destroy_process_group() of the default group: the end of
                 training, open until the process exits (init_process_group() closes it)
A hook that cannot be installed (another version of the library) leaves the job
unguarded in that respect and says so once in the rank's log; it never raises.
"""
from __future__ import annotations

import functools
import importlib.abc
import sys
import threading
from typing import Any, Callable

from . import api

# module -> [(attribute path, section kind, label)]; a label is what verdicts show
GUARDED: dict[str, list[tuple[str, str, str]]] = {
    "torch.serialization": [("save", "checkpoint", "torch.save"), ("load", "checkpoint", "torch.load")],
    "safetensors.torch": [(f, "checkpoint", f"safetensors {f}")
                          for f in ("save_file", "load_file", "save", "load")],
    "torch.distributed.checkpoint.state_dict_saver": [
        (f, "checkpoint", f"torch.distributed.checkpoint.{f}") for f in ("save", "async_save", "save_state_dict")],
    "torch.distributed.checkpoint.state_dict_loader": [
        (f, "checkpoint", f"torch.distributed.checkpoint.{f}") for f in ("load", "load_state_dict")],
    "transformers.trainer": [("Trainer._save_checkpoint", "checkpoint", "Trainer._save_checkpoint"),
                             ("Trainer._load_from_checkpoint", "checkpoint", "Trainer._load_from_checkpoint"),
                             ("Trainer.evaluate", "evaluation", "Trainer.evaluate")],
    **{f"{pkg}.trainer.trainer": [("Trainer.save_checkpoint", "checkpoint", "Trainer.save_checkpoint")]
       for pkg in ("lightning.pytorch", "pytorch_lightning")},
    **{f"{pkg}.loops.evaluation_loop": [("_EvaluationLoop.run", "evaluation", "Lightning evaluation loop")]
       for pkg in ("lightning.pytorch", "pytorch_lightning")},
}
STEP_MODULE = "torch.optim.optimizer"
PG_MODULE = "torch.distributed.distributed_c10d"
_MARK = "__watchdog_d_guarded__"
_warned: set[str] = set()


def install() -> None:
    """Hook what is imported already; wait for the rest."""
    pending: dict[str, Callable[[Any], None]] = {STEP_MODULE: _attach_step_hook,
                                                 PG_MODULE: _hook_process_groups}
    pending.update({name: functools.partial(_guard_module, targets=targets)
                    for name, targets in GUARDED.items()})
    for name in [n for n in pending if n in sys.modules]:
        _run(name, pending.pop(name), sys.modules[name])
    if pending:
        sys.meta_path.insert(0, _Waiting(pending))


def guarded(fn: Callable, kind: str, label: str) -> Callable:
    """``fn`` inside an automatic section ``"<kind>: <label>"`` when called on the main thread."""
    if getattr(fn, _MARK, False):
        return fn
    name = f"{kind}: {label}"
    main = threading.main_thread().ident

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if api._writer is None or threading.get_ident() != main:
            return fn(*args, **kwargs)
        api.open_section(name, api.section_timeout(kind))
        try:
            return fn(*args, **kwargs)
        finally:
            api.close_section()

    setattr(call, _MARK, True)
    return call


def _guard_module(module: Any, targets: list[tuple[str, str, str]]) -> None:
    for path, kind, label in targets:
        owner, _, attr = path.rpartition(".")
        holder = module
        for part in filter(None, owner.split(".")):
            holder = getattr(holder, part)
        original = getattr(holder, attr)
        setattr(holder, attr, guarded(original, kind, label))
        if not owner:
            _reexports(module.__name__, attr, original, getattr(holder, attr))


def _reexports(name: str, attr: str, original: Any, wrapped: Any) -> None:
    """A package that re-exported the function before the hook ran (``torch.save``
    when torch was imported before the rank booted) gets the guarded one too."""
    while "." in name:
        name = name.rpartition(".")[0]
        package = sys.modules.get(name)
        if package is not None and getattr(package, attr, None) is original:
            setattr(package, attr, wrapped)


def _hook_process_groups(module: Any) -> None:
    """destroy_process_group() of the default group begins the end of training;
    init_process_group() (a script in phases) ends it."""
    main = threading.main_thread().ident

    def around(fn: Callable, before: Callable[[tuple, dict], None]) -> Callable:
        if getattr(fn, _MARK, False):
            return fn

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if api._writer is not None and threading.get_ident() == main:
                try:
                    before(args, kwargs)
                except Exception:
                    pass
            return fn(*args, **kwargs)

        setattr(call, _MARK, True)
        return call

    def ending(args: tuple, kwargs: dict) -> None:
        if (args[0] if args else kwargs.get("group")) is None:   # the default group: all of it
            api.begin_shutdown()
            from . import flight

            flight.settle()             # (no flight-recorder dump overlaps the teardown)

    for attr, before in (("destroy_process_group", ending),
                         ("init_process_group", lambda args, kwargs: api.end_shutdown())):
        original = getattr(module, attr)
        wrapped = around(original, before)
        setattr(module, attr, wrapped)
        _reexports(module.__name__, attr, original, wrapped)


step_hook: Any = None      # torch's handle of the step hook (benchmarks take it off and on)


def _attach_step_hook(module: Any) -> None:
    global step_hook
    step_hook = module.register_optimizer_step_post_hook(api.on_optimizer_step)


def _run(name: str, install_hook: Callable[[Any], None], module: Any) -> None:
    try:
        install_hook(module)
    except Exception as e:   # another version of the library: run on unguarded there
        if name not in _warned:
            _warned.add(name)
            try:
                sys.stderr.write(f"watchdog-d: cannot hook {name} ({type(e).__name__}: {e}); "
                                 f"its pauses are not recognised as such\n")
            except Exception:
                pass


class _Waiting(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when a module it waits for is imported, it wraps that
    module's loader so the hook runs right after the module's code."""

    def __init__(self, pending: dict[str, Callable[[Any], None]]):
        self.pending = pending

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        install_hook = self.pending.get(fullname)
        if install_hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                del self.pending[fullname]
                if not self.pending:
                    try:
                        sys.meta_path.remove(self)
                    except ValueError:
                        pass
                spec.loader = _HookingLoader(spec.loader, fullname, install_hook)
                return spec
        return None


class _HookingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str, install_hook: Callable[[Any], None]):
        self._inner, self._name, self._install = inner, name, install_hook

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        # the module is the library's again, loader included (inspect, linecache, reload)
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        _run(self._name, self._install, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
