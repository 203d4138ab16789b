"""Quality of a run's replay (Fig. 9): Inception Score, FID, precision and recall.

    python -m apps.evaluate_generator --export_dir=saved_models/RUN --data_dir=DIR \
        --n=10000 --out=quality.json

Generates ``--n`` samples from the run's SavedModel (``sample`` signature), evenly over the
classes it has learned, and compares them with as many real test samples of those classes
in the feature space of an embedding network trained on the protocol's real training data
(CIFAR: the frozen pre-trained conv layers + FC 2000-2000 + softmax, so pixel-level and
internal replay land in one space; MNIST-like protocols: FC 2000-2000 on the pixels).

The scores go to ``--out`` (default ``EXPORT_DIR/quality.json``, which the export's marker
then lists), a JSON object with ``"written_by": "bir_keras apps.evaluate_generator"``. An
existing ``--out`` is replaced only with ``--overwrite`` and only if this program wrote it.
Every numeric flag has a range: ``--embedding_epochs`` and ``--runs`` at most
``MAX_EPOCHS`` and ``MAX_RUNS``, ``--clusters`` at most ``MAX_CLUSTERS``, ``--n`` at most
``MAX_N`` and, with ``--fc_units``, no more than the memory available can hold
(``memory_needed``), all checked before TensorFlow loads. Exit codes: 0 done, 2 refused
input (one ``error:`` line, before TensorFlow or any data loads where the flags decide it;
also a malformed run.json or a SavedModel that cannot be loaded), 1 work that could not
finish (out of memory; ``--out`` not writable once the scores are computed: they are
printed), 130 Ctrl-C (nothing written).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from absl import flags

from bir_keras import appfiles, rundirs

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "a run's export dir (saved_model/ and run.json)")
flags.DEFINE_string("data_dir", None, "local data files of the run's dataset (default: TFDS)")
flags.DEFINE_integer("n", 10000, "generated and real samples compared (default 10000)")
flags.DEFINE_integer("embedding_epochs", 20, "epochs of the embedding network (default 20)")
flags.DEFINE_integer("fc_units", 2000, "embedding network's FC units (default 2000)")
flags.DEFINE_integer("clusters", 20, "k-means clusters for precision/recall (default 20)")
flags.DEFINE_integer("runs", 10, "k-means repetitions for precision/recall (default 10)")
flags.DEFINE_string("conv_weights", None, "pre-trained conv weights (CIFAR): a file, or "
                    "'authors' / 'ours' (the shipped trunks); default: the run's own")
flags.DEFINE_string("out", None, "JSON file for the scores (default: EXPORT_DIR/quality.json); "
                    "an existing file is replaced only with --overwrite and only if "
                    "apps.evaluate_generator wrote it")
flags.DEFINE_integer("seed", 0, "seed of sampling and clustering (default 0)")
flags.DEFINE_bool("overwrite", False, "replace an existing --out that apps.evaluate_generator "
                  "wrote (a file it did not write is never replaced; default false)",
                  allow_override=True)
# the most the flags may ask: far beyond the paper's settings (n 10000, 20 epochs, 20
# clusters, 10 runs), short of what would run for days; memory bounds --n and --fc_units
MAX_N = 10_000_000
MAX_EPOCHS = 1000
MAX_CLUSTERS = 1000
MAX_RUNS = 1000
for _name, _most in (("n", MAX_N), ("embedding_epochs", MAX_EPOCHS), ("fc_units", None),
                     ("clusters", MAX_CLUSTERS), ("runs", MAX_RUNS)):
    if _most is None:
        flags.register_validator(_name, lambda v: v >= 1, message=f"--{_name} must be at least 1")
    else:
        flags.register_validator(_name, lambda v, most=_most: 1 <= v <= most,
                                 message=f"--{_name} must be in [1, {_most:,}]")
flags.register_validator("seed", lambda v: 0 <= v < 2 ** 32, message="--seed must be in [0, 2^32)")

WRITTEN_BY = "bir_keras apps.evaluate_generator"
QUALITY = "quality.json"


def min_samples(clusters: int) -> int:
    """The fewest samples of each kind the scores need: FID two, precision and recall's
    k-means clusters the generated and real samples together (as many of each)."""
    return max(2, -(-clusters // 2))


def check_n(n: int, clusters: int) -> None:
    """Refuse an ``--n`` too small for the scores (before any work)."""
    need = min_samples(clusters)
    if n < need:
        raise_config(f"--n={n} is too few: precision and recall cluster the generated "
                     f"and real samples together into --clusters={clusters} k-means "
                     f"clusters, and FID needs 2 of each, so --n must be at least {need} "
                     "(or lower --clusters)")


def memory_needed(values: int, fc_units: int, clusters: int) -> tuple[int, int]:
    """(bytes for each pair of one generated and one real sample, bytes that do not depend
    on --n), roughly, for samples of ``values`` numbers: the samples as float32 in their
    copies (drawn, rescaled, normalised; real ones), the embedding network's features of
    both as float32 and float64 and the float64 copies precision and recall cluster, the
    k-means distances to ``clusters`` centres; and the embedding network's weights with
    Adam's slots and gradients."""
    per_pair = 32 * values + 56 * fc_units + 16 * clusters
    fixed = 16 * (values * fc_units + fc_units * fc_units)
    return per_pair, fixed


def check_memory(n: int, values: int, fc_units: int, clusters: int) -> None:
    """Refuse (``ConfigError``) an ``--n`` or ``--fc_units`` the memory available cannot
    hold, naming the flag and the most that fits."""
    free = appfiles.available_memory()
    if free is None:
        return
    per_pair, fixed = memory_needed(values, fc_units, clusters)
    if fixed > free:
        raise_config(f"--fc_units={fc_units}: the embedding network's weights (with Adam's "
                     f"slots) need about {appfiles.gib(fixed)} GiB of memory, "
                     f"{appfiles.gib(free)} GiB are available; lower --fc_units")
    need = fixed + n * per_pair
    if need > free:
        raise_config(f"--n={n}: {n} generated and {n} real samples of {values} values, "
                     f"embedded in --fc_units={fc_units} features, need about "
                     f"{appfiles.gib(need)} GiB of memory, {appfiles.gib(free)} GiB are "
                     f"available; lower --n (at most about {(free - fixed) // per_pair} "
                     "here) or --fc_units")


def read_run(export_dir: str, complete: bool = True) -> dict:
    """The export's run.json, refused (``ConfigError``) where it is not one apps.train
    wrote (``rundirs.read_run_record``): unreadable, not JSON, flags or protocol not
    objects, a malformed input shape; ``complete``: also without the task counts the scores
    need."""
    from bir_keras.config import ConfigError

    path = Path(export_dir) / "run.json"
    if not complete:
        return rundirs.read_run_record(path, need=("flags",))
    run = rundirs.read_run_record(
        path, need=("flags", "tasks_learned", "protocol.num_tasks"),
        counts={"tasks_learned": 0, "protocol.num_tasks": 1}, count_words="a count of tasks")
    learned, tasks = run["tasks_learned"], run.get("protocol", {})["num_tasks"]
    if learned > tasks:
        raise rundirs.RunRecordError(path, f"tasks_learned is {learned}, more than its {tasks} "
                                     "tasks")
    if learned == 0:
        raise ConfigError(f"{export_dir}: this run has not completed a task yet: there are no "
                          "classes learned to score its generator on")
    return run


def sample_values(shape) -> int:
    """Numbers per sample of an input shape."""
    return int(np.prod([int(d) for d in shape]))


def raise_config(message: str) -> None:
    from bir_keras.config import ConfigError

    raise ConfigError(message)


def written_by_us(path: Path) -> bool:
    return appfiles.json_written_by(path, WRITTEN_BY)


def check_out(path: Path, overwrite: bool) -> None:
    try:
        appfiles.check_target(path, "--out", "JSON")
        appfiles.replaceable_file(path, "--out", overwrite, written_by_us,
                                  "apps.evaluate_generator")
    except OSError as e:  # a name too long for the file system, ...
        raise_config(f"--out={path}: cannot write it ({e.strerror or e})")


def check_paths(export_dir: str | None, out: str | None, overwrite: bool = False) -> Path:
    """Refuse what the paths alone decide, before TensorFlow, data or training: returns the
    scores file to write."""
    from bir_keras.config import ConfigError

    if not export_dir:
        raise ConfigError("--export_dir is required")
    export = Path(export_dir)
    try:
        if not (export / "run.json").is_file():
            raise ConfigError(f"{export_dir}: no run.json (not an exported run)")
        if not (export / "saved_model" / "saved_model.pb").is_file():
            raise ConfigError(f"{export_dir}: no saved_model/ (not an exported run)")
    except OSError as e:  # a name too long, a folder that may not be read
        raise ConfigError(f"--export_dir={export_dir}: cannot read it "
                          f"({e.strerror or e})") from None
    replay = read_run(export_dir, complete=False)["flags"].get("replay")
    if replay != "generative":
        raise ConfigError(f"{export_dir}: this run has no generator (replay={replay}; only GR "
                          "and BI-R runs have one)")
    path = Path(out) if out else export / QUALITY
    check_out(path, overwrite)
    return path


def in_export(path: Path, export_dir: str) -> bool:
    """Whether the scores file is the export's own ``quality.json``."""
    return path.name == QUALITY and path.parent.resolve() == Path(export_dir).resolve()


def relist_export(export_dir: str) -> None:
    """After writing ``quality.json`` into an export: list it in the export's marker, but
    only where it is the one thing there the marker does not list (so that nothing of
    anyone else's is ever listed as the package's)."""
    export = Path(export_dir)
    if rundirs.marker_kind(export) != rundirs.EXPORT:
        return
    if rundirs.foreign_entries(export, rundirs.EXPORT) in ([], [QUALITY]):
        rundirs.write_marker(export, rundirs.EXPORT)


def evaluate(export_dir: str, data_dir: str | None, n: int, epochs: int, fc_units: int,
             clusters: int, runs: int, conv_weights: str | None, seed: int) -> dict:
    """Scores of one exported run's generator against the real test data it learned."""
    import tensorflow as tf

    from bir_keras.config import Config, ConfigError
    from bir_keras.data.protocols import make_protocol
    from bir_keras.evaluation import generator_quality as gq
    from bir_keras.experiment import load_trunk
    from bir_keras.weightsfile import LEGACY_DEFAULT_TRUNK

    export = Path(export_dir)
    run = read_run(export_dir)
    try:
        flags_ = Config(**{k: v for k, v in run["flags"].items()
                           if k in Config.__dataclass_fields__})
    except TypeError as e:
        raise ConfigError(f"{export / 'run.json'}: not a run record of apps.train ({e})") \
            from None
    if flags_.experiment == "custom":
        raise ConfigError(f"{export_dir} is a run on your own data: apps.evaluate_generator "
                          "scores runs of the paper's experiments only (its embedding network "
                          "and real samples come from their datasets)")
    proto = make_protocol(flags_.experiment, flags_.scenario, tasks=run["protocol"]["num_tasks"],
                          data_dir=data_dir, seed=flags_.seed,
                          keep_label_order=flags_.keep_label_order)
    # the samples' size from the protocol itself (a run.json may not say it)
    check_memory(n, sample_values(proto.input_shape), fc_units, clusters)
    try:
        model = tf.saved_model.load(str(export / "saved_model"))
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign SavedModel, any error
        text = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"cannot load the SavedModel in {export / 'saved_model'}: "
                          f"{text[0] if text else type(e).__name__}") from None
    if "sample" not in model.signatures:
        raise ConfigError(f"{export_dir}: this run has no generator (no `sample` signature)")
    learned = run["tasks_learned"]
    cpt = proto.classes_per_task
    modes = np.arange(learned * cpt)

    # real data: training set to fit the embedding network, test set to compare with
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for t in range(learned):
        task = proto.task(t)
        xs_tr.append(proto.preprocess_np(task.x_train))
        ys_tr.append(t * cpt + task.y_train % cpt)
        xs_te.append(proto.preprocess_np(task.x_test))
        ys_te.append(t * cpt + task.y_test % cpt)
    x_tr, y_tr = np.concatenate(xs_tr), np.concatenate(ys_tr)
    x_te = np.concatenate(xs_te)

    trunk = None
    features = bool(run["protocol"].get("features"))
    if proto.conv:
        # a run recorded without a trunk's name is older than the default "authors"
        weights = (conv_weights or run["flags"].get("conv_weights")
                   or LEGACY_DEFAULT_TRUNK)
        try:
            trunk = load_trunk(weights)
        except (OSError, ValueError) as e:  # a truncated or foreign weights file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"cannot load the conv weights {weights}: {first}") from None
        trunk.trainable = False

    def to_space(x: np.ndarray) -> np.ndarray:
        """Pixels (normalised) -> conv features for CIFAR; MNIST pixels stay as they are."""
        if trunk is None:
            return x
        return np.concatenate([trunk(x[s:s + 500], training=False).numpy()
                               for s in range(0, len(x), 500)])

    embedding = gq.build_embedding_network((x_tr.shape[1] if trunk is None else 1024,),
                                           len(modes), fc_units=fc_units)
    gq.train_embedding_network(embedding, to_space(x_tr), y_tr, epochs=epochs, seed=seed)

    rng = np.random.RandomState(seed)
    ids = np.resize(modes, n)
    rng.shuffle(ids)
    fake = []
    for s in range(0, n, 500):
        out = model.signatures["sample"](class_ids=tf.constant(ids[s:s + 500], tf.int32))
        fake.append(out["x"].numpy())
    fake = np.concatenate(fake).reshape(n, -1)
    if not features:
        # samples are in [0, 1]: back to the 0..255 scale of stored pixels, so that they
        # take the real data's normalisation (Protocol.preprocess_np)
        fake = proto.preprocess_np((fake * 255.0).reshape(n, *proto.input_shape))
        fake = to_space(fake)
    if len(x_te) < min_samples(clusters):
        raise ConfigError(f"the run's test data holds only {len(x_te)} samples of the "
                          f"{len(modes)} classes learned: too few real samples for "
                          f"--clusters={clusters} (at least {min_samples(clusters)} needed); "
                          "lower --clusters")
    real = to_space(x_te[rng.permutation(len(x_te))[:n]])
    real = real.reshape(len(real), -1)
    scores = gq.evaluate_generator(embedding, real, fake.reshape(len(fake), -1),
                                   num_clusters=clusters, num_runs=runs, seed=seed)
    return {"written_by": WRITTEN_BY, "export_dir": str(export), "tasks_learned": learned,
            "n_fake": int(len(fake)), "n_real": int(len(real)), "embedding_epochs": epochs,
            **scores}


def main(argv: list[str]) -> int:
    """Score a run's generator and write JSON.

    Exit codes (``exit_code_of``): 0 done, 1 out of memory or a file that failed during the
    work, 2 refused input, 130 interrupted (Ctrl-C)."""
    del argv
    return exit_code_of(_main)


def exit_code_of(work) -> int:
    """Run ``work`` and return this program's exit code for how it ended
    (``apps.common.run_work``)."""
    from apps.common import TrainingFailed, run_work
    from bir_keras.config import ConfigError
    from bir_keras.data.sources import DataError

    return run_work(work, refused=(ConfigError, DataError, FileExistsError),
                    failed=(TrainingFailed,), os_errors=True,  # a file that failed meanwhile
                    interrupted="interrupted; nothing written")


def _main() -> int:
    from apps.common import check_data_dir, out_of_memory_names

    check_n(FLAGS.n, FLAGS.clusters)
    out = check_paths(FLAGS.export_dir, FLAGS.out, FLAGS.overwrite)
    check_data_dir(FLAGS.data_dir)
    if FLAGS.conv_weights and FLAGS.conv_weights != "random":
        # the one rule of a weights file (bir_keras.weightsfile), as apps.train's
        from bir_keras.weightsfile import check_weights_file

        check_weights_file(FLAGS.conv_weights, "--conv_weights")
    shape = read_run(FLAGS.export_dir, complete=False).get("protocol", {}).get("input_shape")
    # without the shape, one value a sample (what no protocol goes below); checked again
    # with the protocol's shape once it is made, before any work
    check_memory(FLAGS.n, sample_values(shape) if shape else 1, FLAGS.fc_units,
                 FLAGS.clusters)
    with contextlib.ExitStack() as claims:
        claims.enter_context(rundirs.claim(out, "--out"))
        if in_export(out, FLAGS.export_dir):
            # an apps.train run still writing this export would replace it meanwhile
            claims.enter_context(rundirs.claim(FLAGS.export_dir, "--export_dir"))
        out = check_paths(FLAGS.export_dir, FLAGS.out, FLAGS.overwrite)
        with out_of_memory_names("--n"):
            res = evaluate(FLAGS.export_dir, FLAGS.data_dir, FLAGS.n, FLAGS.embedding_epochs,
                           FLAGS.fc_units, FLAGS.clusters, FLAGS.runs, FLAGS.conv_weights,
                           FLAGS.seed)
        return _write(out, res)


def _write(out: Path, res: dict) -> int:
    from apps.common import EXIT_OK, TrainingFailed

    text = json.dumps(res, indent=2)
    try:
        appfiles.write_file(out, lambda tmp: Path(tmp).write_text(text + "\n"),
                            check=appfiles.replace_check("--out", written_by_us,
                                                         "apps.evaluate_generator"))
    except (OSError, rundirs.PathRefused) as e:
        # the work is done: print the scores; a path taken meanwhile is a refusal (2), a
        # write that failed (no space left, a read-only file system, ...) a failure (1)
        print(text)
        if isinstance(e, (rundirs.PathRefused, FileExistsError)):
            raise rundirs.PathRefused(f"{e}; the scores are printed above") from None
        raise TrainingFailed(f"--out={out}: cannot write it ({e.strerror or e}); the scores "
                             "are printed above") from None
    if in_export(out, FLAGS.export_dir):
        relist_export(FLAGS.export_dir)
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
