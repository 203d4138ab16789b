"""What a sweep runs: one ``Run`` per (method, sweep value, seed), each an ``apps.train``
command line (its arguments, ``--name=value``) with a stamp of its settings and a run
directory named by it; consecutive seeds of one setting grouped into packs.

Pure Python (no TensorFlow, no absl flags): a run's arguments are strings, as the caller
gives them; ``apps.compare`` builds them from its flags and checks each as ``apps.train``
would (``sweeps.runner.Program.check``)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from bir_keras.appfiles import available_memory
from bir_keras.config import (
    MAX_SEEDS_AT_ONCE,
    METHODS,
    Config,
    ConfigError,
    check_seeds_at_once,
    unpackable,
)

# apps.train flags that change how a run executes, not what it computes: runs with only
# these beside --method and --seed have the paper's settings
EXECUTION_FLAGS = frozenset({"data_dir", "jit_compile", "strategy", "num_logical_cpus",
                             "deterministic", "log_every", "progress_every", "tf_log",
                             "eval_batch", "eval_n", "checkpoint_every", "xla_cache_dir"})
# ... and those of them that cannot change a run's numbers at all: left out of its stamp, so
# that a run is cached whatever they are
NOT_STAMPED = frozenset({"progress_every", "tf_log", "checkpoint_every", "xla_cache_dir"})
# apps.train flags whose value may name what a run reads (a weights file; a data file or
# folder): where it does, the stamp holds a fingerprint of it (``contents_hash``), so that
# new data under an old name is a new run, not a cached one
INPUT_FLAGS = frozenset({"data_dir", "conv_weights"})
# the most files a --data_dir folder's fingerprint lists (a folder of images of a large
# dataset holds some hundred thousand; more is not a dataset this package reads)
MAX_DATA_FILES = 2_000_000
# what a sweep value may keep in a file name as it is (nothing else: no '/', no NUL, no
# leading '.', no '..'); a value with anything else, or longer than NAME_PART, is written as
# a slug of it, '~' and a hash of the value ('~' never appears in a value kept as it is)
KEPT = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_+=.-]*")
NAME_PART = 40


@dataclasses.dataclass(frozen=True)
class Run:
    """One planned run: ``method`` (a ``bir_keras.config.METHODS`` name), the sweep
    ``value`` (None without a sweep), ``seed``; ``key`` names its setting in tables and
    messages (``bir``, ``bir-batch_replay4``), ``tag`` in file names; ``args`` are its
    ``apps.train`` arguments, ``stamp`` their hash, ``dir`` its run directory
    (``<root>/runs/<tag>-s<seed>-<stamp>``: ``out/``, ``export/``, ``log.txt``,
    ``stamp.json``)."""

    method: str
    value: str | None
    key: str
    tag: str
    seed: int
    args: tuple[str, ...]
    stamp: str
    dir: Path

    @property
    def name(self) -> str:
        """How messages name the run: ``bir seed 3``."""
        return f"{self.key} seed {self.seed}"


def flag_name(arg: str, among: frozenset[str] = EXECUTION_FLAGS) -> str:
    """The flag an argument sets: ``--nojit_compile`` -> ``jit_compile`` (a ``no`` prefix
    is dropped where the rest is a flag of ``among``)."""
    name = arg.lstrip("-").split("=", 1)[0]
    if name.startswith("no") and name not in among and name[2:] in among:
        return name[2:]
    return name


def stamp(args: Sequence[str]) -> str:
    """A short hash of a run's settings (its apps.train arguments, order-independent; the
    flags that cannot change its numbers, ``NOT_STAMPED``, are left out) and of what an
    ``INPUT_FLAGS`` argument names (``contents_hash``: a ``--conv_weights`` file, a
    ``--data_dir`` file or folder; a name that is none, such as ``--conv_weights=authors``,
    is a setting like any other). Raises ``ConfigError`` where that cannot be read."""
    kept = sorted(a for a in args if flag_name(a, NOT_STAMPED) not in NOT_STAMPED)
    inputs = []
    for a in kept:
        flag, _, value = a.partition("=")
        name = flag_name(a)
        # os.path: False for a name the file system cannot hold, too; a pipe or a device
        # is not read here
        if name in INPUT_FLAGS and value and (
                os.path.isfile(value) or name == "data_dir" and os.path.isdir(value)):
            inputs.append(f"{a}#{contents_hash(Path(value), flag)}")
    # without input files, the stamp of earlier versions (the cache key of runs on disk)
    key = json.dumps([kept, inputs] if inputs else kept)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def contents_hash(path: Path, flag: str = "--data_dir") -> str:
    """A fingerprint of a file, its bytes (read once per process while its size and
    modification time stay), or of a folder, the paths, sizes and modification times of
    its files (a folder of images is not read whole to plan a sweep; a file changed in it
    changes its time). Raises ``ConfigError`` for what cannot be read, or a folder of more
    than ``MAX_DATA_FILES`` files."""
    def refuse(f, e):
        return ConfigError(f"{flag}={path}: cannot read {f} ({e.strerror or e})")

    if not path.is_dir():
        try:
            st = path.stat()
            return _file_hash(str(path.resolve()), st.st_size, st.st_mtime_ns)[:16]
        except OSError as e:
            raise refuse(path, e) from None
    listing, stack, seen = [], [path], set()
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:   # a link back up: listed once
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        stack.append(Path(entry.path))
                    elif entry.is_file():
                        st = entry.stat()
                        listing.append((Path(entry.path).relative_to(path).parts,
                                        st.st_size, st.st_mtime_ns))
        except OSError as e:
            raise refuse(folder, e) from None
        if len(listing) > MAX_DATA_FILES:
            raise ConfigError(f"{flag}={path}: a folder of more than {MAX_DATA_FILES:,} "
                              "files, not a dataset this package reads")
    listing.sort()
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1024)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def changed_settings(passthrough: Sequence[str], sweep: str | None = None) -> list[str]:
    """The passed-through arguments that make these runs differ from the paper's settings
    (all but ``EXECUTION_FLAGS``), and the sweep (``flag:v1,v2``) if any."""
    out = [a for a in passthrough if flag_name(a) not in EXECUTION_FLAGS]
    return out + ([f"--sweep={sweep}"] if sweep else [])


def name_part(value: str) -> str:
    """``value`` (a sweep value) as a part of a file name: itself where it is a safe, short
    name (``KEPT``, ``NAME_PART`` characters at most, no ``..``), else a readable slug of it
    with ``~`` and a hash of the value, so that two values never give one name."""
    if len(value) <= NAME_PART and KEPT.fullmatch(value) and ".." not in value:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_+=-]+", "_", value).strip("_")
    return f"{slug[:NAME_PART - len(digest) - 1]}~{digest}"


def shown(value) -> str:
    """A sweep value as a run's argument writes it (``True`` -> ``true``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def plan(methods: Sequence[str], seeds: Sequence[int], experiment: str, scenario: str,
         passthrough: Sequence[str], root: str | Path,
         sweep: tuple[str, Sequence] | None = None) -> list[Run]:
    """One ``Run`` per (method, sweep value, seed), in that order: ``--experiment``,
    ``--scenario``, ``--method``, ``--seed``, then ``passthrough`` (further apps.train
    arguments, ``--name=value``) and the swept ``--<flag>=<value>`` last (it wins over a
    passed-through one). ``sweep``: ``(flag, values)``, the values as apps.train reads
    them (``apps.compare`` parses ``--sweep=flag:v1,v2`` so). Each run directory is a
    single path component under ``<root>/runs/`` whatever the sweep value is
    (``name_part``). Raises ``ConfigError`` for no method, an unknown or repeated method,
    a repeated sweep value."""
    name, values = (None, [None]) if sweep is None else (sweep[0], [shown(v) for v in sweep[1]])
    for i, v in enumerate(values):
        if v in values[:i]:
            raise ConfigError(f"--sweep: --{name}={v} is listed twice")
    if not methods:
        raise ConfigError("--methods is empty: name at least one method")
    root = Path(root)
    runs = []
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m in methods[:i]:
            raise ConfigError(f"--methods lists {m} twice")
        for v in values:
            for s in seeds:
                args = (f"--experiment={experiment}", f"--scenario={scenario}",
                        f"--method={m}", f"--seed={s}", *passthrough,
                        *([f"--{name}={v}"] if name else []))
                st = stamp(args)
                # key: how tables and messages name the setting; tag: how file names do
                key = f"{m}-{name}{v}" if name else m
                tag = f"{m}-{name}{name_part(v)}" if name else m
                runs.append(Run(m, v, key, tag, int(s), args, st,
                                root / "runs" / f"{tag}-s{s}-{st}"))
    return runs


def pack_size(config: Config, explicit: int | None, seeds: int, workers: int,
              seed_bytes: float | None = None) -> int:
    """How many seeds of the resolved setting ``config`` one apps.train packs: ``explicit``
    (``--seeds_at_once``; refused with ``ConfigError`` above 1 where the setting cannot be
    packed) or, by default, as many of ``seeds`` as fit in the memory available to
    ``workers`` runs at once, a seed needing ``seed_bytes`` (1 where the setting cannot be
    packed; all of them, up to ``MAX_SEEDS_AT_ONCE``, where the need or the memory is not
    known)."""
    why = unpackable(config)
    if explicit is not None:
        if explicit > 1 and why:
            raise ConfigError(why)
        # apps.train's rule of a pack (1 <= K <= MAX_SEEDS_AT_ONCE); more than that packs
        # as many as one apps.train takes
        k = min(explicit, MAX_SEEDS_AT_ONCE) if explicit >= 1 else explicit
        check_seeds_at_once(config, k)
        return k
    if why:
        return 1
    free = available_memory()
    if free is None or not seed_bytes:
        return min(seeds, MAX_SEEDS_AT_ONCE)
    return max(1, min(seeds, MAX_SEEDS_AT_ONCE, int(free // (seed_bytes * workers))))


def groups_of(todo: Sequence[Run], sizes: dict[str, int]) -> list[list[Run]]:
    """The runs to do, as packs: consecutive seeds of one method (and sweep value), at most
    ``sizes[key]`` per pack (1 where a key is not in ``sizes``); every method's first pack
    before any method's second, so that a compare cut short covers all methods."""
    by_key: dict[str, list[Run]] = {}
    for r in todo:
        by_key.setdefault(r.key, []).append(r)
    out: list[list[Run]] = []
    for key, runs in by_key.items():
        runs.sort(key=lambda r: r.seed)
        for r in runs:
            g = out[-1] if out and out[-1][0].key == key else None
            if g and len(g) < sizes.get(key, 1) and r.seed == g[-1].seed + 1:
                g.append(r)
            else:
                out.append([r])
    out.sort(key=lambda g: g[0].seed)
    return out
