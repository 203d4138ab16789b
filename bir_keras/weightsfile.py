"""Check a file of pre-trained conv weights before TensorFlow loads (pure Python and h5py).

``check_weights_file(path, flag)`` raises :class:`bir_keras.data.sources.DataError` with one
line when ``path`` is missing, a folder, unreadable, not an HDF5 file (its 8-byte
signature), a damaged HDF5 file, or an HDF5 file that is not a Keras ``.weights.h5`` of the
CIFAR conv trunk (``bir_keras.models.layers.conv_trunk``: the variables' groups and shapes
that ``trunk.save_weights`` writes and ``trunk.load_weights`` reads), or whose weights cannot
be read whole or are not finite (a pre-training that diverged). A file that passes is one
Keras can load into the trunk.

``--conv_weights`` also takes the names of the shipped trunks (``TRUNKS``): ``authors``
(the authors' pre-trained trunk, converted; the default) and ``ours`` (pre-trained here);
``resolve_conv_weights`` turns a value into the file it means.
"""

from __future__ import annotations

import os
from pathlib import Path

from bir_keras.data.sources import DataError

_SAVED = Path(__file__).resolve().parent.parent / "saved_models"
# the shipped pre-trained trunks, by the names --conv_weights takes
TRUNKS = {
    "authors": _SAVED / "authors_c3_5x16_bn" / "conv_trunk.weights.h5",  # converted, 100 epochs
    "ours": _SAVED / "cifar10_conv" / "conv_trunk.weights.h5",  # apps.pretrain, 35 epochs
}
DEFAULT_TRUNK = "authors"
# what a run recorded without --conv_weights loaded before the default became "authors"
# (bir_keras.config.resolve now records the name; a record of a CIFAR run without one is older)
LEGACY_DEFAULT_TRUNK = "ours"


def resolve_conv_weights(value: str | os.PathLike | None) -> str | Path:
    """The file a ``--conv_weights`` value means: ``None`` or ``""`` the default trunk
    (``DEFAULT_TRUNK``), a name of ``TRUNKS`` its shipped file, ``"random"`` itself (an
    untrained trunk), anything else the path given (a file named like a trunk: ``./ours``)."""
    if value is None or value == "":
        return TRUNKS[DEFAULT_TRUNK]
    if isinstance(value, str) and (value in TRUNKS or value == "random"):
        return TRUNKS.get(value, value)
    return Path(value)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CHANNELS = (3, 16, 32, 64, 128, 256)


def _trunk_layout() -> dict[str, list[tuple[int, ...]]]:
    """The conv trunk's ``.weights.h5`` layout: Keras' group of each layer with variables
    (``layers/<snake_case class name>[_<k>]``) -> the shapes of its variables, in order."""
    layout: dict[str, list[tuple[int, ...]]] = {}
    for i, (cin, cout) in enumerate(zip(_CHANNELS, _CHANNELS[1:])):
        k = f"_{i}" if i else ""
        layout[f"conv2d{k}"] = [(3, 3, cin, cout), (cout,)]
        if i < 4:  # gamma, beta, moving mean, moving variance
            layout[f"batch_normalization{k}"] = [(cout,)] * 4
    return layout


TRUNK_LAYOUT = _trunk_layout()
_WHAT = ("a Keras .weights.h5 of the CIFAR conv trunk (5 conv layers, 3x3, 16-32-64-128-256 "
         "channels), as apps.pretrain writes it")


def _signature_at(f, size: int) -> bool:
    """HDF5's signature at offset 0, 512, 1024, 2048, ... (a user block may precede it)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size and offset <= 1 << 20:
        f.seek(offset)
        if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else 2 * offset
    return False


def check_weights_file(path: str | os.PathLike, flag: str = "--conv_weights") -> None:
    """Raise ``DataError`` (one line naming ``flag``) unless ``path`` is a readable Keras
    ``.weights.h5`` whose variables fit the conv trunk. ``path`` may be a name of
    ``TRUNKS`` (the line then names the file too)."""
    where = f"{flag}={os.fspath(path)}"
    if isinstance(path, str) and path in TRUNKS:
        where, path = f"{where} ({TRUNKS[path]})", TRUNKS[path]
    if not os.path.lexists(path):
        raise DataError(f"{where} does not exist; run `python -m apps.pretrain` or name its "
                        f"output ({_WHAT})")
    if os.path.isdir(path):
        raise DataError(f"{where} is a directory; name the weights file ({_WHAT})")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            ok = _signature_at(f, size)
    except OSError as err:
        raise DataError(f"{where} cannot be read ({err.strerror or err})") from None
    if not ok:
        hint = " (it is gzip-compressed)" if head[:2] == b"\x1f\x8b" else ""
        raise DataError(f"{where} is not an HDF5 file{hint}; it must be {_WHAT}")
    try:
        import h5py
    except ImportError:  # h5py comes with Keras; without it only the signature is checked
        return
    try:
        with h5py.File(path, "r") as h5:
            found = _layout(h5)
            finite = found == TRUNK_LAYOUT and _finite(h5)  # reads every weight (~1.6 MB)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise DataError(f"{where} is a damaged HDF5 file ({err}); pre-train again or copy "
                        "it again") from None
    if found != TRUNK_LAYOUT:
        missing = sorted(set(TRUNK_LAYOUT) - set(found))
        other = sorted(k for k in found if found[k] != TRUNK_LAYOUT.get(k))
        detail = (f"no layer {missing[0]}" if missing else
                  f"layer {other[0]} holds shapes {found[other[0]]}" if other else "")
        raise DataError(f"{where} is an HDF5 file but not the conv trunk's weights "
                        f"({detail or 'other layers'}); it must be {_WHAT}")
    if not finite:
        raise DataError(f"{where} holds weights that are not finite (NaN or infinity: a "
                        "pre-training that diverged); pre-train again with a lower --lr")


def _finite(h5) -> bool:
    """Whether every weight of the trunk's layers is finite (reading them all: a file whose
    data was cut off fails here)."""
    import numpy as np

    return all(np.isfinite(np.asarray(h5[f"layers/{name}/vars/{i}"][()], dtype=np.float64)).all()
               for name, shapes in TRUNK_LAYOUT.items() for i in range(len(shapes)))


def _layout(h5) -> dict[str, list[tuple[int, ...]]]:
    """Layer group -> shapes of its variables (``layers/<name>/vars/<i>``), for the layers
    that have variables."""
    import h5py

    layers = h5.get("layers")
    if not isinstance(layers, h5py.Group):
        return {}
    found = {}
    for name, group in layers.items():
        vars_ = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(vars_, h5py.Group) or not len(vars_):
            continue
        keys = sorted(vars_, key=lambda k: int(k) if k.isdigit() else -1)
        found[name] = [tuple(vars_[k].shape) if isinstance(vars_[k], h5py.Dataset) else ()
                       for k in keys]
    return found
