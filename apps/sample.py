"""Draw samples of a saved run's generator as a PNG grid: one row per class.

    python -m apps.sample --saved_model=saved_models/demo --classes=0,1,2 --n=16 --out=grid.png

Needs only TensorFlow to load the run (its ``sample`` signature), not this package. The
image layout comes from the run's ``run.json`` (next to ``saved_model/``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from absl import flags

from bir_keras.fileio import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "an export dir of apps.train, or its saved_model/ "
                    "subfolder (required)")
flags.DEFINE_list("classes", None, "comma-separated class ids to draw, one row each: output "
                  "units in Task-IL and Class-IL, in the order the classes were learned (the "
                  "printed dataset_classes and class_names, read from the SavedModel, say "
                  "which dataset class each is); task * classes_per_task + class in "
                  "Domain-IL (default: every class the run has learned)")
flags.DEFINE_integer("n", 8, "samples per class, i.e. per row (default 8)")
flags.DEFINE_string("out", "samples.png", "the PNG file to write (default samples.png)")
flags.DEFINE_integer("scale", 0, "pixels per input pixel, nearest-neighbour (default 0: about "
                     "64 pixels per sample)")

PAD = 2  # pixels between samples and around the grid
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


def write_png(image: np.ndarray, path: str) -> Path:
    """Write ``image`` (H, W, 1|3 uint8) as a PNG atomically: temp file, then rename."""
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def parse_classes(values: list[str] | None) -> list[int] | None:
    """Class ids from ``--classes`` (None: all learned)."""
    if not values:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise SampleError(f"--classes={','.join(values)}: expected comma-separated "
                          "integers") from None


def sample(saved_model: str, classes: list[int] | None, n: int, out: str, scale: int = 0) -> dict:
    """Load the run, draw ``n`` samples per class, write the grid; returns what was drawn."""
    if n < 1:
        raise SampleError(f"--n={n}: need at least 1 sample per class")
    if scale < 0:
        raise SampleError(f"--scale={scale}: must be 0 (auto) or positive")
    if Path(out).is_dir():
        raise SampleError(f"--out={out} is a directory; name the PNG file to write")
    if any(p.is_file() for p in Path(out).parents):
        raise SampleError(f"--out={out}: a folder on that path is a file")
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
    ids = np.repeat(np.asarray(classes, np.int32), n)
    try:
        result = loaded.signatures["sample"](class_ids=tf.constant(ids))
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
    """Parse flags, draw, print where the grid went."""
    del argv
    try:
        if not FLAGS.saved_model:
            raise SampleError("--saved_model is required")
        info = sample(FLAGS.saved_model, parse_classes(FLAGS.classes), FLAGS.n, FLAGS.out,
                      FLAGS.scale)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info["experiment"] == "permuted_mnist":
        print("note: permuted MNIST: the generator draws inputs in each task's permuted pixel "
              "order (only task 1 is unpermuted), so samples of later tasks look like noise")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
