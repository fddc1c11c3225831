"""Run single modules of a library from its published wheel, without installing the library.

Some libraries cannot be installed next to a CPU-only torch (their packages pull triton, deepspeed, flash-attn,
vllm, or pin another TRL), yet the code holding their losses is plain PyTorch. `wheel(dist, version)` downloads
the wheel once with the registry's own client (`pip download --no-deps`, exact version; cached in
`~/.cache/dpo-ref/wheels` or `$DPO_REF_WHEELS`), and `load_from_wheel(path, modules, stub_tops)` executes only
the named modules from it, every other import under `stub_tops` answered by an inert stand-in (`_Stub`).
Nothing is copied into this repository and sys.modules is left as it was.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

WHEEL_DIR = Path(os.environ.get("DPO_REF_WHEELS", Path.home() / ".cache" / "dpo-ref" / "wheels"))


class Unavailable(RuntimeError):
    """The library cannot be had here (registry unreachable, not installed); the message says why."""


def wheel(dist: str, version: str) -> Path:
    """The cached wheel of `dist==version`, downloaded (no dependencies) on first use."""
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(WHEEL_DIR.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"{dist}=={version}"]
    try:
        run = subprocess.run([*cmd, "-d", str(WHEEL_DIR)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip download {dist}=={version} timed out (registry unreachable?)") from None
    found = sorted(WHEEL_DIR.glob(f"{stem}*.whl"))
    if run.returncode != 0 or not found:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"pip download {dist}=={version} failed: {last}")
    return found[0]


# ---- executing single modules from a wheel -------------------------------------------------------------------


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


class _Stub(metaclass=_StubMeta):
    """An inert stand-in for anything a heavy import provides: subclassable, callable, falsy."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __bool__(self):
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()


def _stub_class(name: str) -> type:
    # its own __init__, so that code doing `del Base.__init__` (ms-swift does, on TRL's DPOTrainer) runs
    return _StubMeta(name, (_Stub,), {"__init__": _Stub.__init__})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stub_class(name)
        setattr(self, name, value)
        return value


class _WheelFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `real` modules from the wheel's source and every other module under `stub_tops` as a stub package."""

    def __init__(self, archive: zipfile.ZipFile, real: dict[str, str], stub_tops: set[str]):
        self.archive, self.real, self.stub_tops = archive, real, stub_tops

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.real:
            return importlib.util.spec_from_loader(
                fullname, self, origin=f"{self.archive.filename}/{self.real[fullname]}"
            )
        parent_of_real = any(mod.startswith(fullname + ".") for mod in self.real)
        if fullname.split(".")[0] in self.stub_tops and (parent_of_real or self._asked_by_the_wheel()):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def _asked_by_the_wheel(self) -> bool:
        """Only an import statement in a module from the wheel gets a stub. A probe such as transformers'
        `importlib.util.find_spec("peft")` (is_peft_available, cached for the process) must see the truth."""
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        return frame is not None and frame.f_code.co_filename.startswith(self.archive.filename)

    def create_module(self, spec):
        return None if spec.name in self.real else _StubModule(spec.name)

    def exec_module(self, module):
        if module.__name__ in self.real:
            src = self.archive.read(self.real[module.__name__]).decode()
            exec(compile(src, module.__spec__.origin, "exec"), module.__dict__)


def load_from_wheel(whl: Path, modules: list[str], stub_tops: set[str]) -> dict[str, types.ModuleType]:
    """Execute `modules` (dotted names, in order) from the wheel; imports under `stub_tops` (which must include the
    library's own top-level package) get stubs. sys.modules is left as it was: entries under `stub_tops` that existed
    before (an installed TRL, say) are hidden during the load and put back after."""
    with zipfile.ZipFile(whl) as archive:
        names = archive.namelist()
        real = {}
        for mod in modules:
            suffix = mod.replace(".", "/") + ".py"
            hits = sorted((n for n in names if n == suffix or n.endswith("/" + suffix)), key=len)
            if not hits:
                raise Unavailable(f"{whl.name} has no {suffix}")
            real[mod] = hits[0]
        _settle_availability_probes(stub_tops)
        hidden = {k: v for k, v in sys.modules.items() if k.split(".")[0] in stub_tops}
        for k in hidden:
            del sys.modules[k]
        finder = _WheelFinder(archive, real, stub_tops)
        sys.meta_path.insert(0, finder)
        try:
            return {mod: importlib.import_module(mod) for mod in modules}
        finally:
            sys.meta_path.remove(finder)
            for k in [k for k in sys.modules if k.split(".")[0] in stub_tops]:
                del sys.modules[k]
            sys.modules.update(hidden)


def _settle_availability_probes(stub_tops: set[str]) -> None:
    """transformers caches `is_peft_available()` etc. for the process, and `importlib.util.find_spec` answers from
    sys.modules: asked while a stub `peft` is loaded, it would say True forever. Ask before the stubs exist."""
    from transformers.utils import import_utils

    for top in stub_tops:
        probe = getattr(import_utils, f"is_{top}_available", None)
        if callable(probe):
            probe()
