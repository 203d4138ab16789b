"""Draw samples of a saved run's generator as a PNG grid: one row per class.

    python -m apps.sample --saved_model=saved_models/demo --classes=0,1,2 --n=16 --out=grid.png

Needs only TensorFlow to load the run (its ``sample`` signature), not this package. The
image layout comes from the run's ``run.json`` (next to ``saved_model/``).

The PNG carries a text chunk ``Software: bir_keras apps.sample``. An existing ``--out`` is
replaced only with ``--overwrite`` and only if it is such a PNG: a file that apps.sample did
not write is never replaced. Exit codes: 0 done, 2 refused input (one ``error:`` line,
before anything loads where the flags decide it; also an ``--n`` too large for memory),
1 out of memory all the same, 130 Ctrl-C (nothing written).
"""

from __future__ import annotations

import json
import math
import sys
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
flags.DEFINE_string("out", "samples.png", "the PNG file to write (default samples.png); an "
                    "existing file is replaced only with --overwrite and only if apps.sample "
                    "wrote it")
flags.DEFINE_integer("scale", 0, "pixels per input pixel, nearest-neighbour (default 0: about "
                     "64 pixels per sample)")
# allow_override: apps.train's --overwrite may be defined in the same process (tests)
flags.DEFINE_bool("overwrite", False, "replace an existing --out that apps.sample wrote (a "
                  "file it did not write is never replaced; default false)",
                  allow_override=True)

PAD = 2  # pixels between samples and around the grid
SOFTWARE = "bir_keras apps.sample"  # the PNG's "Software" text chunk: this program wrote it
PNG_MAX_SIDE = 2 ** 31 - 1
PAD_VALUE = 128  # mid-grey, visible against white-on-black digits and against photos
FLAT_SIDES = {784: 28, 1024: 32, 64: 8}


class SampleError(Exception):
    """A refused request: printed as one ``error:`` line, exit code 2."""


def locate(path: str) -> tuple[Path, Path | None]:
    """(the SavedModel folder, the run.json next to it or None) for an export dir or its
    ``saved_model/`` subfolder."""
    p = Path(path)
    if (p / "saved_model" / "saved_model.pb").exists():
        model_dir = p / "saved_model"
    elif (p / "saved_model.pb").exists():
        model_dir = p
    else:
        raise SampleError(f"--saved_model={path}: no SavedModel there (expected "
                          f"saved_model.pb, or a saved_model/ folder holding one)")
    run_json = model_dir.parent / "run.json"
    return model_dir, run_json if run_json.exists() else None


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


def written_by_sample(path: Path) -> bool:
    """Whether ``path`` is a PNG that apps.sample wrote (its ``Software`` text chunk)."""
    return appfiles.png_text(path, "Software") == SOFTWARE


def check_out(out: str, overwrite: bool) -> None:
    """Refuse an ``--out`` that may not be written or replaced (before any work)."""
    appfiles.check_target(out, "--out", "PNG")
    appfiles.replaceable_file(out, "--out", overwrite, written_by_sample, "apps.sample")


def write_png(image: np.ndarray, path: str) -> Path:
    """Write ``image`` (H, W, 1|3 uint8) as a PNG atomically (temp file, then rename), marked
    as written by apps.sample; what is at ``path`` by then must be ours or absent."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    info = PngInfo()
    info.add_text("Software", SOFTWARE)
    return appfiles.write_file(
        path, lambda tmp: pil.save(tmp, format="PNG", pnginfo=info),
        check=appfiles.replace_check("--out", written_by_sample, "apps.sample"))


def bytes_needed(samples: int, h: int, w: int, c: int, scale: int) -> int:
    """About the memory ``samples`` samples of h x w x c take, drawn and laid out at
    ``scale``: the generator's float32 output and its copy, the float32 arrays of the
    enlarged samples while they become pixels, the uint8 pixels, the grid and PIL's copy."""
    values = h * w * c
    return samples * values * (12 + 16 * scale * scale)


def check_fits(n: int, classes: list[int], h: int, w: int, c: int, scale: int) -> None:
    """Refuse (exit 2) a grid that cannot fit in memory or in a PNG, naming --n."""
    rows = len(classes)
    width, height = n * (w * scale + PAD) + PAD, rows * (h * scale + PAD) + PAD
    if width > PNG_MAX_SIDE or height > PNG_MAX_SIDE:
        side = (PNG_MAX_SIDE - PAD) // (w * scale + PAD)
        raise SampleError(f"--n={n}: a row of {n} samples would be {width} pixels wide, more "
                          f"than a PNG can hold ({PNG_MAX_SIDE}); lower --n (at most {side}) "
                          "or --scale")
    need = bytes_needed(n * rows, h, w, c, scale)
    free = appfiles.available_memory()
    if free is not None and need > free:
        most = free // max(1, bytes_needed(rows, h, w, c, scale))
        raise SampleError(f"--n={n}: {rows} row(s) of {n} samples ({h}x{w}x{c}, scale "
                          f"{scale}) need about {appfiles.gib(need)} GiB of memory, "
                          f"{appfiles.gib(free)} GiB are available; lower --n (at most "
                          f"about {most} here), --scale or the number of --classes")


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
    model_dir, run_json = locate(saved_model)
    run = json.loads(run_json.read_text()) if run_json else None
    protocol = (run or {}).get("protocol", {})
    if protocol.get("features"):
        raise SampleError(f"{model_dir} is a run with internal replay: its samples are hidden "
                          "features after the frozen conv layers, not images, so there is "
                          "nothing to draw")
    learned = None
    if run is not None:
        learned = int(run.get("tasks_learned", 0)) * int(protocol.get("classes_per_task", 0))
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
    elif any(c < 0 for c in classes):
        raise SampleError(f"class ids must be >= 0, got {classes}")
    if protocol.get("input_shape"):  # the layout is known before anything loads
        h, w, c = image_layout(protocol["input_shape"])
        check_fits(n, classes, h, w, c, scale or max(1, 64 // max(h, w)))

    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except Exception as e:  # a corrupt or foreign SavedModel
        raise SampleError(f"cannot load the SavedModel in {model_dir}: {e}") from None
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
        if not protocol.get("input_shape"):  # no run.json: one sample shows the layout
            shape = draw(class_ids=tf.constant(classes[:1], tf.int32))["x"].shape[1:]
            h, w, c = image_layout(list(shape))
            check_fits(n, classes, h, w, c, scale or max(1, 64 // max(h, w)))
        ids = np.repeat(np.asarray(classes, np.int32), n)
        result = draw(class_ids=tf.constant(ids))
    except tf.errors.InvalidArgumentError as e:  # an id past the generator's modes
        raise SampleError(f"class ids {classes} rejected by the generator: "
                          f"{e.message.splitlines()[0]}") from None
    x = result["x"].numpy()
    input_shape = protocol.get("input_shape") or list(x.shape[1:])
    h, w, c = image_layout(input_shape)
    if int(np.prod(x.shape[1:])) != h * w * c:
        raise SampleError(f"samples of shape {list(x.shape[1:])} do not match the run's "
                          f"input shape {list(input_shape)}")
    scale = scale or max(1, 64 // max(h, w))
    image = grid(x.reshape(len(ids), h, w, c), len(classes), n, scale)
    try:
        path = write_png(image, out)
    except FileExistsError:
        raise
    except OSError as e:
        raise SampleError(f"--out={out}: cannot write it ({e.strerror or e})") from None
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


def dataset_classes(protocol: dict, classes: list[int]) -> list[int] | None:
    """The dataset's class of each requested id (None where ids are not classes: Domain-IL,
    permuted MNIST, or no run.json); the class order is a permutation drawn from the seed."""
    order = protocol.get("class_order")
    if not order or protocol.get("scenario") == "domain" \
            or protocol.get("experiment") == "permuted_mnist":
        return None
    return [int(order[c]) if c < len(order) else None for c in classes]


def main(argv: list[str]) -> int:
    """Parse flags, draw, print where the grid went.

    Exit codes: 0 done, 1 out of memory, 2 refused input, 130 interrupted (Ctrl-C)."""
    del argv
    from apps.common import TrainingFailed, out_of_memory_names

    try:
        if not FLAGS.saved_model:
            raise SampleError("--saved_model is required")
        with out_of_memory_names("--n (or --scale, or the number of --classes)"):
            info = sample(FLAGS.saved_model, parse_classes(FLAGS.classes), FLAGS.n,
                          FLAGS.out, FLAGS.scale, FLAGS.overwrite)
    except (SampleError, rundirs.PathRefused, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        if not appfiles.caused_by_interrupt(e):
            raise
        print(f"interrupted; nothing written ({FLAGS.out} left as it was)", file=sys.stderr,
              flush=True)
        return appfiles.EXIT_INTERRUPTED
    if info["experiment"] == "permuted_mnist":
        print("note: permuted MNIST: the generator draws inputs in each task's permuted pixel "
              "order (only task 1 is unpermuted), so samples of later tasks look like noise")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
