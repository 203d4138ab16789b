"""A persistent XLA cache: a run loads the compiled training steps an earlier run of the same
program compiled, instead of compiling them again (6-10 s of a BI-R split MNIST run on a
2-core CPU, where the whole run takes 90-230 s: README, Speed).

TensorFlow has the mechanism (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory``): after
compiling a cluster it writes the executable to that directory, keyed by a hash of the
cluster's signature and of its HLO, and before compiling it looks there, checking that the
entry's HLO is the one it would compile. A hit gives the same executable, so the same
numbers, as compiling. Every seed of a setting compiles to the same program (the seed's keys
are inputs of the step: ``StepContext.draw_key``), so a sweep over seeds compiles each step
once; XdG's masks are constants of its step, so XdG compiles once per seed.

What this module adds to it:

* **One subdirectory per TensorFlow version and CPU** (``tf<version>-<cpu>``): the
  executables are machine code for the CPU that compiled them, and nothing in TensorFlow's
  key says which, so an entry made on a machine with AVX-512 is never loaded on one without.
* **Atomic entries under concurrent runs.** TensorFlow writes an entry in place, so a second
  process reading it at that moment could load half a file. Each run therefore points
  TensorFlow at a private folder of its own (``.run-<host>-<pid>-<random>``, holding hard
  links to the shared entries, or copies where links are not possible) and, when it ends,
  moves the entries it wrote into the shared folder with one rename each; the shared folder
  only ever holds complete entries. The private folder is then removed; one left by a killed
  run on this host is removed by the next run.

It has to be set before TensorFlow compiles anything (TensorFlow reads ``TF_XLA_FLAGS`` once
per process), so ``enabled`` refuses to start once TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

FLAG = "--tf_xla_persistent_cache_directory"
ENTRY_PREFIX = "xla_compile_cache__"  # what TensorFlow names its entries
RUN_PREFIX = ".run-"
# written into each private folder first: only a folder holding it is ever removed as stale
RUN_MARKER = ".bir_keras_xla_run"


class CacheError(ValueError):
    """The cache cannot be used as asked (bad path, TensorFlow already loaded, ...)."""


def cpu_tag() -> str:
    """A short name of this CPU's model and instruction-set extensions."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            seen = set()
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part") and key not in seen:
                    seen.add(key)
                    parts.append(line.strip())
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def cache_folder(root: str | os.PathLike) -> Path:
    """The shared folder of this TensorFlow version and CPU under ``root``."""
    try:
        version = importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Path(root).expanduser().resolve() / f"tf{version}-{cpu_tag()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_runs(shared: Path, host: str) -> None:
    """Remove the private folders left by killed runs of this host: their names say whose,
    and their marker that this module made them."""
    for d in shared.glob(f"{RUN_PREFIX}{host}-*"):
        pid = d.name[len(f"{RUN_PREFIX}{host}-"):].split("-", 1)[0]
        if (d.is_dir() and not d.is_symlink() and (d / RUN_MARKER).is_file()
                and pid.isdigit() and not _pid_alive(int(pid))):
            shutil.rmtree(d, ignore_errors=True)


def _entries(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.glob(f"{ENTRY_PREFIX}*") if p.is_file()}


def _publish(private: Path, shared: Path, known: set[str]) -> int:
    """Move the entries TensorFlow wrote in ``private`` into ``shared``: one rename each, so a
    reader sees a whole entry or none. Returns how many."""
    n = 0
    for name, path in _entries(private).items():
        if name in known:
            continue
        os.replace(path, shared / name)
        n += 1
    return n


@contextlib.contextmanager
def enabled(root: str | os.PathLike) -> Iterator[Path]:
    """Use a persistent XLA cache under ``root`` for this process's compilations; yields the
    shared folder. Call before TensorFlow is imported."""
    text = str(root)
    if not text.strip():
        raise CacheError("--xla_cache_dir is empty")
    if any(c.isspace() for c in str(Path(text).expanduser().resolve())):
        # TF_XLA_FLAGS is split at white space
        raise CacheError(f"--xla_cache_dir {text!r}: the path may not contain spaces")
    if FLAG in os.environ.get("TF_XLA_FLAGS", ""):
        raise CacheError(f"--xla_cache_dir and TF_XLA_FLAGS={FLAG}=... both ask for an XLA "
                         "cache: use one")
    if "tensorflow" in sys.modules:
        raise CacheError("--xla_cache_dir must be set before TensorFlow is imported")
    shared = cache_folder(text)
    if Path(text).expanduser().exists() and not Path(text).expanduser().is_dir():
        raise CacheError(f"--xla_cache_dir {text}: not a directory")
    try:
        shared.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"--xla_cache_dir {text}: cannot create {shared} ({e.strerror})") from None
    if not os.access(shared, os.W_OK | os.X_OK):
        raise CacheError(f"--xla_cache_dir {text}: {shared} is not writable")
    host = socket.gethostname().replace("-", "_") or "host"
    _remove_stale_runs(shared, host)
    private = shared / f"{RUN_PREFIX}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    private.mkdir()
    known = set()
    try:
        (private / RUN_MARKER).write_text(f"{os.getpid()}\n")
        for name, path in _entries(shared).items():
            try:
                os.link(path, private / name)
            except OSError:
                shutil.copy2(path, private / name)
            known.add(name)
        before = os.environ.get("TF_XLA_FLAGS")
        os.environ["TF_XLA_FLAGS"] = " ".join(filter(None, [before, f"{FLAG}={private}"]))
        try:
            yield shared
        finally:
            if before is None:
                os.environ.pop("TF_XLA_FLAGS", None)
            else:
                os.environ["TF_XLA_FLAGS"] = before
            _publish(private, shared, known)
    finally:
        shutil.rmtree(private, ignore_errors=True)
