"""Draw samples of a saved run's generator as an image grid: one row per class.

    python -m apps.sample --saved_model=saved_models/demo --classes=0,1,2 --n=16 --out=grid.png

Needs only TensorFlow to load the run (its ``sample`` signature), not this package. The
image layout comes from the run's ``run.json`` (next to ``saved_model/``).

``--out``'s extension names the format: ``.png`` (also a name without extension) or
``.jpg`` / ``.jpeg``; any other is refused. A PNG carries a text chunk ``Software: bir_keras
apps.sample``, a JPEG the same words as its comment. An existing ``--out`` is replaced only
with ``--overwrite`` and only if it carries that mark: a file that apps.sample did not write
is never replaced. Exit codes: 0 done, 2 refused input (one ``error:`` line, before anything
loads where the flags decide it; also an ``--n`` or ``--scale`` too large for memory or for
the image format, a missing, corrupt or foreign run), 1 work that could not finish (out of
memory all the same, ``--out`` not writable once the grid is drawn: no space left, ...),
130 Ctrl-C (nothing written).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
from absl import flags

from bir_keras import appfiles, rundirs

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "an export dir of apps.train, or its saved_model/ "
                    "subfolder (required)")
flags.DEFINE_list("classes", None, "comma-separated class ids to draw, one row each: output "
                  "units in Task-IL and Class-IL, in the order the classes were learned (the "
                  "printed dataset_classes and class_names, read from the SavedModel, say "
                  "which dataset class each is); task * classes_per_task + class in "
                  "Domain-IL (default: every class the run has learned)")
flags.DEFINE_integer("n", 8, "samples per class, i.e. per row (default 8)")
flags.DEFINE_string("out", "samples.png", "the image file to write (default samples.png): .png "
                    "(or no extension) or .jpg/.jpeg; an existing file is replaced only with "
                    "--overwrite and only if apps.sample wrote it")
flags.DEFINE_integer("scale", 0, "pixels per input pixel, nearest-neighbour (default 0: about "
                     "64 pixels per sample)")
# allow_override: apps.train's --overwrite may be defined in the same process (tests)
flags.DEFINE_bool("overwrite", False, "replace an existing --out that apps.sample wrote (a "
                  "file it did not write is never replaced; default false)",
                  allow_override=True)

PAD = 2  # pixels between samples and around the grid
SOFTWARE = "bir_keras apps.sample"  # the PNG's "Software" text chunk: this program wrote it
# the format each extension of --out names (no extension: PNG), and the most pixels on a side
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
MAX_SIDE = {"PNG": 2 ** 31 - 1, "JPEG": 65535}
JPEG_QUALITY = 95
PAD_VALUE = 128  # mid-grey, visible against white-on-black digits and against photos
FLAT_SIDES = {784: 28, 1024: 32, 64: 8}


class SampleError(Exception):
    """A refused request: printed as one ``error:`` line, exit code 2."""


class SampleFailed(Exception):
    """Work that started and could not finish (the grid could not be written): one
    ``error:`` line, exit code 1."""


def out_format(out: str) -> str:
    """The image format ``--out``'s extension names (PNG without one); refuses the rest."""
    suffix = Path(out).suffix.lower()
    if not suffix:
        return "PNG"
    if suffix not in FORMATS:
        raise SampleError(f"--out={out}: cannot write {suffix} images; name a .png, .jpg or "
                          ".jpeg file")
    return FORMATS[suffix]


def locate(path: str) -> tuple[Path, Path | None]:
    """(the SavedModel folder, the run.json next to it or None) for an export dir or its
    ``saved_model/`` subfolder."""
    p = Path(path)
    try:
        if (p / "saved_model" / "saved_model.pb").is_file():
            model_dir = p / "saved_model"
        elif (p / "saved_model.pb").is_file():
            model_dir = p
        else:
            raise SampleError(f"--saved_model={path}: no SavedModel there (expected "
                              f"saved_model.pb, or a saved_model/ folder holding one)")
        run_json = model_dir.parent / "run.json"
        return model_dir, run_json if run_json.exists() else None
    except OSError as e:  # a name too long, a folder that may not be read
        raise SampleError(f"--saved_model={path}: cannot read it ({e.strerror or e})") from None


def read_run(run_json: Path) -> dict:
    """The run record next to the SavedModel, refused (``SampleError``) where it is not one
    that apps.train writes: unreadable, not JSON, or its protocol or task count malformed
    (``rundirs.read_run_record``)."""
    try:
        return rundirs.read_run_record(
            run_json, counts={"tasks_learned": 0, "protocol.classes_per_task": 0})
    except rundirs.RunRecordError as e:
        raise SampleError(str(e)) from None


def image_layout(input_shape: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """(height, width, channels) for a protocol's input shape."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3 and shape[-1] in (1, 3):
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 1:
        d = shape[0]
        side = FLAT_SIDES.get(d)
        if side is None and math.isqrt(d) ** 2 == d:
            side = math.isqrt(d)
        if side is not None:
            return side, side, 1
        if d % 3 == 0 and math.isqrt(d // 3) ** 2 == d // 3:
            side = math.isqrt(d // 3)
            return side, side, 3
    raise SampleError(f"cannot draw inputs of shape {list(shape)} as images")


def grid(x: np.ndarray, rows: int, cols: int, scale: int) -> np.ndarray:
    """Samples ``x`` (rows * cols, H, W, C) in [0, 1] -> a uint8 image with padding."""
    _, h, w, c = x.shape
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
    out = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, c), PAD_VALUE, np.uint8)
    pixels = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    for i in range(rows):
        for j in range(cols):
            top, left = PAD + i * (h + PAD), PAD + j * (w + PAD)
            out[top:top + h, left:left + w] = pixels[i * cols + j]
    return out


def jpeg_comments(path: str | Path) -> list[bytes]:
    """The comment segments (COM) of a JPEG file before its image data ([] if it is not a
    JPEG or cannot be read)."""
    found = []
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return []
            while True:
                head = f.read(4)
                if len(head) < 4 or head[0] != 0xFF:
                    return found
                marker, length = head[1], struct.unpack(">H", head[2:])[0]
                if marker == 0xDA or length < 2:  # start of scan: the image data follows
                    return found
                body = f.read(length - 2)
                if marker == 0xFE:
                    found.append(body)
    except OSError:
        return []


def written_by_sample(path: Path) -> bool:
    """Whether ``path`` is an image that apps.sample wrote: a PNG with its ``Software`` text
    chunk or a JPEG with its comment (whatever the file's extension)."""
    return appfiles.png_text(path, "Software") == SOFTWARE \
        or SOFTWARE.encode() in jpeg_comments(path)


def check_out(out: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that may not be written or replaced (before any work)."""
    fmt = out_format(out)
    try:
        appfiles.check_target(out, "--out", fmt)
        appfiles.replaceable_file(out, "--out", overwrite, written_by_sample, "apps.sample")
    except OSError as e:  # a name too long for the file system, ...
        raise SampleError(f"--out={out}: cannot write it ({e.strerror or e})") from None


def write_image(image: np.ndarray, path: str) -> Path:
    """Write ``image`` (H, W, 1|3 uint8) atomically (temp file, then rename) in the format
    ``path``'s extension names, marked as written by apps.sample; what is at ``path`` by then
    must be ours or absent."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if out_format(path) == "JPEG":
        def save(tmp: str) -> None:
            pil.save(tmp, format="JPEG", quality=JPEG_QUALITY, comment=SOFTWARE.encode())
    else:
        info = PngInfo()
        info.add_text("Software", SOFTWARE)

        def save(tmp: str) -> None:
            pil.save(tmp, format="PNG", pnginfo=info)
    return appfiles.write_file(
        path, save, check=appfiles.replace_check("--out", written_by_sample, "apps.sample"))



def bytes_needed(samples: int, h: int, w: int, c: int, scale: int) -> int:
    """About the memory ``samples`` samples of h x w x c take, drawn and laid out at
    ``scale``: the generator's float32 output and its copy, the float32 arrays of the
    enlarged samples while they become pixels, the uint8 pixels, the grid and PIL's copy."""
    values = h * w * c
    return samples * values * (12 + 16 * scale * scale)


def check_fits(n: int, classes: list[int], h: int, w: int, c: int, scale: int,
               fmt: str = "PNG") -> None:
    """Refuse (exit 2) a grid that cannot fit in memory or in an image of ``fmt``, naming
    the flag to lower: --scale where one sample per class is already too much, else --n
    (with the most that fits)."""
    rows, side = len(classes), MAX_SIDE[fmt]
    cell_w, cell_h = w * scale + PAD, h * scale + PAD
    if max(cell_w, cell_h) + PAD > side:
        raise SampleError(f"--scale={scale}: one {h}x{w} sample would be {w * scale}x"
                          f"{h * scale} pixels, more than a {fmt} can hold ({side} a side); "
                          "lower --scale")
    width, height = n * cell_w + PAD, rows * cell_h + PAD
    if height > side:
        raise SampleError(f"--classes: {rows} rows of samples would be {height} pixels high, "
                          f"more than a {fmt} can hold ({side}); draw at most "
                          f"{(side - PAD) // cell_h} classes or lower --scale")
    if width > side:
        raise SampleError(f"--n={n}: a row of {n} samples would be {width} pixels wide, more "
                          f"than a {fmt} can hold ({side}); lower --n (at most "
                          f"{(side - PAD) // cell_w}) or --scale")
    need = bytes_needed(n * rows, h, w, c, scale)
    free = appfiles.available_memory()
    if free is not None and need > free:
        one = bytes_needed(rows, h, w, c, scale)
        if one > free:
            raise SampleError(f"--scale={scale}: {rows} row(s) of even 1 sample ({h}x{w}x{c}) "
                              f"need about {appfiles.gib(one)} GiB of memory, "
                              f"{appfiles.gib(free)} GiB are available; lower --scale or the "
                              "number of --classes")
        raise SampleError(f"--n={n}: {rows} row(s) of {n} samples ({h}x{w}x{c}, scale "
                          f"{scale}) need about {appfiles.gib(need)} GiB of memory, "
                          f"{appfiles.gib(free)} GiB are available; lower --n (at most "
                          f"about {free // one} here), --scale or the number of --classes")


def parse_classes(values: list[str] | None) -> list[int] | None:
    """Class ids from ``--classes`` (None: all learned)."""
    if not values:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise SampleError(f"--classes={','.join(values)}: expected comma-separated "
                          "integers") from None


def sample(saved_model: str, classes: list[int] | None, n: int, out: str, scale: int = 0,
           overwrite: bool = False) -> dict:
    """Load the run, draw ``n`` samples per class, write the grid; returns what was drawn.
    ``out`` is claimed while it is worked on: a second apps.sample writing it is refused."""
    if n < 1:
        raise SampleError(f"--n={n}: need at least 1 sample per class")
    if scale < 0:
        raise SampleError(f"--scale={scale}: must be 0 (auto) or positive")
    check_out(out, overwrite)
    with rundirs.claim(out, "--out"):
        check_out(out, overwrite)
        return _sample(saved_model, classes, n, out, scale)


def _sample(saved_model: str, classes: list[int] | None, n: int, out: str, scale: int) -> dict:
    fmt = out_format(out)
    model_dir, run_json = locate(saved_model)
    run = read_run(run_json) if run_json else None
    protocol = (run or {}).get("protocol", {})
    if protocol.get("features"):
        raise SampleError(f"{model_dir} is a run with internal replay: its samples are hidden "
                          "features after the frozen conv layers, not images, so there is "
                          "nothing to draw")
    if protocol.get("kind") == "features":
        raise SampleError(f"{model_dir} is a run on feature vectors: its samples are features, "
                          "not images, so there is nothing to draw (bir_keras.load(...).sample "
                          "gives them as arrays)")
    # a run on your own images knows their shape; the paper's protocols their input shape
    layout = protocol.get("sample_shape") or protocol.get("input_shape")
    learned = None
    if run is not None:
        learned = int(run.get("tasks_learned", 0)) * int(protocol.get("classes_per_task", 0))
        if run.get("tasks_learned") == 0:
            raise SampleError(f"{run_json}: this run has not completed a task yet: no class "
                              "learned to draw")
    if classes is None:
        if not learned:
            raise SampleError("pass --classes (no run.json with the classes learned next to "
                              f"{model_dir})")
        classes = list(range(learned))
    if learned is not None:
        bad = [c for c in classes if not 0 <= c < learned]
        if bad:
            raise SampleError(f"class id(s) {', '.join(map(str, bad))} out of range: this run "
                              f"learned {run['tasks_learned']} task(s), class ids "
                              f"0..{learned - 1}")
    elif any(not 0 <= c < 2 ** 31 for c in classes):
        raise SampleError(f"class ids must be >= 0 and below 2^31, got {classes}")
    if layout:  # the layout is known before anything loads
        h, w, c = image_layout(layout)
        check_fits(n, classes, h, w, c, scale or max(1, 64 // max(h, w)), fmt)
    else:  # at least one pixel a sample: what no layout can make smaller
        check_fits(n, classes, 1, 1, 1, scale or 1, fmt)

    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except Exception as e:  # a corrupt or foreign SavedModel
        raise SampleError(f"cannot load the SavedModel in {model_dir}: "
                          f"{first_line(e)}") from None
    if "sample" not in loaded.signatures:
        method = (run or {}).get("flags", {}).get("replay")
        which = f" (replay={method})" if method else ""
        raise SampleError(f"{model_dir} has no `sample` signature: only runs with generative "
                          f"replay (GR, BI-R) have a generator to sample from{which}")
    if "classify_features" in loaded.signatures:
        raise SampleError(f"{model_dir} generates hidden features (internal replay), not "
                          "images: nothing to draw")
    draw = loaded.signatures["sample"]
    try:
        if not layout:  # no run.json: one sample shows the layout
            shape = draw(class_ids=tf.constant(classes[:1], tf.int32))["x"].shape[1:]
            h, w, c = image_layout(list(shape))
            check_fits(n, classes, h, w, c, scale or max(1, 64 // max(h, w)), fmt)
        ids = np.repeat(np.asarray(classes, np.int32), n)
        result = draw(class_ids=tf.constant(ids))
    except tf.errors.InvalidArgumentError as e:  # an id the SavedModel has not learned
        raise SampleError(f"class ids {classes} refused by the SavedModel: "
                          f"{first_line(e)}") from None
    x = result["x"].numpy()
    input_shape = layout or list(x.shape[1:])
    h, w, c = image_layout(input_shape)
    if int(np.prod(x.shape[1:])) != h * w * c:
        raise SampleError(f"samples of shape {list(x.shape[1:])} do not match the run's "
                          f"input shape {list(input_shape)}")
    scale = scale or max(1, 64 // max(h, w))
    image = grid(x.reshape(len(ids), h, w, c), len(classes), n, scale)
    try:
        path = write_image(image, out)
    except FileExistsError:
        raise
    except OSError as e:  # no space left, a file system turned read-only meanwhile, ...
        raise SampleFailed(f"--out={out}: cannot write it ({e.strerror or e}); nothing was "
                           "written") from None
    per_row = {k: v.numpy().reshape(len(classes), n)[:, 0] for k, v in result.items()
               if k != "x"}
    info = {"out": str(path), "classes": classes, "n": n, "image_shape": [h, w, c],
            "scale": scale, "size": [image.shape[1], image.shape[0]],
            "labels": per_row["labels"].tolist(),
            "dataset_classes": dataset_classes(protocol, classes),
            "experiment": protocol.get("experiment")}
    if "dataset_labels" in per_row:  # the SavedModel's own map (exports since it has one)
        info["dataset_classes"] = per_row["dataset_labels"].tolist()
        info["class_names"] = [b.decode() for b in per_row["class_names"]]
    return info


def first_line(e: BaseException) -> str:
    """The line of an error worth showing: an assertion's own message where TensorFlow
    wraps one ("Graph execution error: ... assertion failed: [...]"), else the first."""
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("assertion failed: ["):
            return ln[len("assertion failed: ["):].rstrip("]")
    return lines[0] if lines else type(e).__name__


def dataset_classes(protocol: dict, classes: list[int]) -> list[int] | None:
    """The dataset's class of each requested id (None where ids are not classes: Domain-IL,
    permuted MNIST, or no run.json); the class order is a permutation drawn from the seed."""
    order = protocol.get("class_order")
    if not isinstance(order, list) or not order or protocol.get("scenario") == "domain" \
            or protocol.get("experiment") == "permuted_mnist":
        return None
    try:
        return [int(order[c]) if c < len(order) else None for c in classes]
    except (TypeError, ValueError):
        return None


def main(argv: list[str]) -> int:
    """Parse flags, draw, print where the grid went.

    Exit codes (``apps.common.run_work``): 0 done, 1 out of memory or the grid not written,
    2 refused input, 130 interrupted (Ctrl-C)."""
    del argv
    from apps.common import TrainingFailed, run_work

    return run_work(_main, refused=(SampleError, rundirs.PathRefused, FileExistsError),
                    failed=(TrainingFailed, SampleFailed),
                    os_errors=True,  # a file that failed during the work (a claim's lock, ...)
                    interrupted=lambda e: f"interrupted; nothing written ({FLAGS.out} left as "
                                          "it was)")


def _main() -> int:
    from apps.common import EXIT_OK, out_of_memory_names

    if not FLAGS.saved_model:
        raise SampleError("--saved_model is required")
    with out_of_memory_names("--n (or --scale, or the number of --classes)"):
        info = sample(FLAGS.saved_model, parse_classes(FLAGS.classes), FLAGS.n,
                      FLAGS.out, FLAGS.scale, FLAGS.overwrite)
    if info["experiment"] == "permuted_mnist":
        print("note: permuted MNIST: the generator draws inputs in each task's permuted pixel "
              "order (only task 1 is unpermuted), so samples of later tasks look like noise")
    print(json.dumps(info))
    return EXIT_OK


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
