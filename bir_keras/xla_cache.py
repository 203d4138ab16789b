"""A persistent XLA cache: a run loads the compiled training steps an earlier run of the same
program compiled, instead of compiling them again (6-10 s of a BI-R split MNIST run on a
2-core CPU, where the whole run takes 90-230 s: docs/speed.md).

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

* **Damaged entries are removed before TensorFlow reads them.** TensorFlow fails a run on an
  entry it cannot parse (``OutOfRangeError: Read less bytes than requested``, ``DataLossError:
  Can't parse ... as binary proto``), so one truncated or overwritten file would break every
  later run sharing the cache. ``enabled`` therefore checks each shared entry first
  (``check_entry``: the file parses, to its last byte, as the binary
  ``tensorflow.XlaSerializedCacheEntry`` TensorFlow writes, with the key its name spells, an
  HLO module and an executable) and removes one that does not, with one ``warning:`` line on
  stderr; the run compiles that step again and stores it anew, so it gets the numbers of a
  run without the entry. Only files named as TensorFlow names its entries, in the folder of
  this TensorFlow version and CPU, are ever removed. New entries are checked the same way
  before they are published. A file can parse and still be damaged (bytes overwritten inside
  the executable: TensorFlow then stops with ``InternalError: Failed to parse serialized
  CpuAotCompilationResult``), so each entry is published with its SHA-256 beside it
  (``<entry>.sha256``, written before the entry's rename) and an entry whose bytes do not
  match it, or that has none (one from before checksums, or put there by another program),
  is removed the same way.

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
    """TensorFlow's finished entries in ``folder`` (``<prefix>__<signature>__<cluster>__
    <device>[...].pb``; its temporary files end in ``.tmp``), plain files only."""
    return {p.name: p for p in folder.glob(f"{ENTRY_PREFIX}*{ENTRY_SUFFIX}")
            if p.is_file() and not p.is_symlink()}


# -- the entry file: a binary tensorflow.XlaSerializedCacheEntry (compiler/jit/
# xla_compilation_cache.proto): 1 key (XlaSerializedCacheKey: 1 signature_fingerprint uint64,
# 2 cluster_fingerprint uint64, 3 device_type string, 4 prefix string, 5 compiled_using_pjrt
# bool), 2 hlo_module (xla.HloModuleProto), 3 executable (bytes)
ENTRY_SUFFIX = ".pb"
SUM_SUFFIX = ".sha256"  # beside each published entry: the hex SHA-256 of its bytes
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class DamagedEntry(ValueError):
    """A cache entry that TensorFlow could not read."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise DamagedEntry("truncated (a number runs past the end)")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise DamagedEntry("not a protocol buffer (a number longer than 10 bytes)")


def _fields(data: bytes, what: str) -> dict[int, list]:
    """The fields of one protocol-buffer message in wire format: number -> values (ints
    for numbers, bytes for length-delimited ones). ``DamagedEntry`` unless it parses to the
    last byte."""
    found: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, kind = tag >> 3, tag & 7
        if number == 0:
            raise DamagedEntry(f"not a protocol buffer ({what}: field number 0)")
        if kind == _VARINT:
            value, pos = _varint(data, pos)
        elif kind in (_FIXED64, _FIXED32):
            end = pos + (8 if kind == _FIXED64 else 4)
            if end > len(data):
                raise DamagedEntry(f"truncated ({what}: {end - len(data)} bytes missing)")
            value, pos = int.from_bytes(data[pos:end], "little"), end
        elif kind == _LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise DamagedEntry(f"truncated ({what}: {pos + size - len(data)} bytes "
                                   "missing)")
            value, pos = data[pos:pos + size], pos + size
        else:  # groups (3, 4) are not used by these messages; 6, 7 do not exist
            raise DamagedEntry(f"not a protocol buffer ({what}: wire type {kind})")
        found.setdefault(number, []).append(value)
    return found


def check_entry(path: str | os.PathLike, data: bytes | None = None) -> None:
    """Raise ``DamagedEntry`` (saying why) unless ``path`` holds a whole binary
    ``XlaSerializedCacheEntry`` whose key is the one its file name spells, with an HLO
    module and an executable. Pure Python: usable before TensorFlow loads."""
    name = Path(path).name
    if data is None:
        data = Path(path).read_bytes()
    if not data:
        raise DamagedEntry("empty")
    entry = _fields(data, "entry")
    for number, field in ((1, "key"), (2, "hlo_module"), (3, "executable")):
        values = entry.get(number, [])
        if len(values) != 1 or not isinstance(values[0], bytes):
            raise DamagedEntry(f"no {field}" if not values else f"a bad {field} field")
    key = _fields(entry[1][0], "key")
    _fields(entry[2][0], "hlo_module")  # its own fields whole (not parsed deeper)
    if not entry[3][0]:
        raise DamagedEntry("an empty executable")
    parts = name[:-len(ENTRY_SUFFIX)].split("__")
    spelt = (key.get(4, [b""])[-1], key.get(1, [None])[-1], key.get(2, [None])[-1],
             key.get(3, [b""])[-1])
    try:
        want = (parts[0].encode(), int(parts[1]), int(parts[2]), parts[3].encode())
    except (IndexError, ValueError):
        raise DamagedEntry(f"a file name TensorFlow does not write ({name})") from None
    if spelt != want:
        raise DamagedEntry("its key is not the one its file name spells")


def _check_entries(folder: Path, label: str) -> list[str]:
    """Remove the damaged entries of ``folder`` (a file that changed while it was read is
    left alone); returns ``"<name>: <why>"`` of each one removed."""
    removed = []
    for name, path in sorted(_entries(folder).items()):
        try:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                data = f.read()
        except OSError:
            continue  # gone meanwhile, or unreadable: TensorFlow will not get further
        try:
            check_entry(path, data)
            check_sum(path, data)
        except DamagedEntry as e:
            try:
                now = os.stat(path, follow_symlinks=False)
                if (now.st_ino, now.st_dev) == (before.st_ino, before.st_dev):
                    os.remove(path)
                    removed.append(f"{name}: {e}")
            except OSError:
                pass
    for stale in folder.glob(f"{ENTRY_PREFIX}*{ENTRY_SUFFIX}{SUM_SUFFIX}"):
        if not (folder / stale.name[:-len(SUM_SUFFIX)]).exists():
            with contextlib.suppress(OSError):
                stale.unlink()  # the checksum of an entry that is gone
    if removed:
        print(f"warning: {label}: removed {len(removed)} damaged XLA cache "
              f"entr{'y' if len(removed) == 1 else 'ies'} ({'; '.join(removed)}); the steps "
              "are compiled again", file=sys.stderr, flush=True)
    return removed


def check_sum(path: str | os.PathLike, data: bytes) -> None:
    """Raise ``DamagedEntry`` unless the checksum beside the entry ``path`` (``seal``) is the
    SHA-256 of ``data``, its bytes."""
    try:
        want = Path(str(path) + SUM_SUFFIX).read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise DamagedEntry("no checksum beside it (an entry from before checksums, or one "
                           "bir_keras did not publish)") from None
    if hashlib.sha256(data).hexdigest() != want:
        raise DamagedEntry("its bytes do not match their checksum (overwritten)")


def seal(path: str | os.PathLike, data: bytes, into: Path) -> None:
    """Write the checksum of the entry ``path`` (bytes ``data``) beside where it will be
    published, in ``into``, atomically."""
    name = Path(path).name + SUM_SUFFIX
    tmp = into / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(hashlib.sha256(data).hexdigest() + "\n")
    os.replace(tmp, into / name)


def _publish(private: Path, shared: Path, known: set[str]) -> int:
    """Move the entries TensorFlow wrote in ``private`` into ``shared``: its checksum first,
    then the entry, one rename each, so a reader sees a whole entry or none. Returns how
    many."""
    n = 0
    for name, path in _entries(private).items():
        if name in known:
            continue
        try:
            data = path.read_bytes()
            check_entry(path, data)
            seal(path, data, shared)
        except (DamagedEntry, OSError):
            continue  # a half-written entry (a full disk): not shared, compiled next time
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
    _check_entries(shared, f"--xla_cache_dir {text}")
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
