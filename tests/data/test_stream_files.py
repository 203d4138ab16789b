"""bir_keras.data.stream_files: a stream from an .npz or a folder of task folders."""

import os

import numpy as np
import pytest
from PIL import Image

from bir_keras.data.sources import DataError
from bir_keras.data.stream_files import load_stream, read_npz, read_task_folders
from bir_keras.data.streams import task_split

H, W = 6, 5


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _grey(seed):
    return np.random.RandomState(seed).randint(0, 256, (H, W)).astype(np.uint8)


def _tasks(root, tasks=(("b", "a"), ("c", "d")), n=(3, 2)):
    """root/task<i>/{train,test}/<class>/<k>.png, grey H x W."""
    seed = 0
    for i, classes in enumerate(tasks):
        for split, count in zip(("train", "test"), n):
            for c in classes:
                for k in range(count):
                    seed += 1
                    _png(root / f"task{i}" / split / c / f"{k}.png", _grey(seed))
    return root


def _refused(path, *facts):
    with pytest.raises(DataError) as info:
        load_stream(path)
    msg = str(info.value)
    assert "\n" not in msg and all(f in msg for f in facts), msg
    return msg


def test_task_folders_give_the_tasks_classes_and_grey_pixels(tmp_path):
    root = _tasks(tmp_path / "mine")
    (root / ".hidden" / "train").mkdir(parents=True)  # hidden: ignored
    (root / "task0" / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "task0" / "train" / "a" / ".0.png").write_bytes(b"hidden, not an image")
    (root / "README.md").write_text("a file beside the task folders")
    s = load_stream(str(root) + os.sep)
    assert s.name == "mine" and s.kind == "pixels" and s.notes == ()
    assert s.x_train.shape == (12, H, W) and s.x_test.shape == (8, H, W)
    assert s.x_train.dtype == np.uint8
    assert s.class_names == ["a", "b", "c", "d"] and s.tasks == [["a", "b"], ["c", "d"]]
    assert task_split(s) == s.tasks
    assert np.bincount(s.y_train).tolist() == [3] * 4 and np.bincount(s.y_test).tolist() == [2] * 4
    with Image.open(root / "task0" / "train" / "a" / "0.png") as img:
        first = np.asarray(img)
    assert np.array_equal(s.x_train[s.y_train == 0][0], first)


def test_a_class_in_two_tasks_is_one_class(tmp_path):
    s = read_task_folders(_tasks(tmp_path, (("a", "b"), ("a", "c")), (2, 1)))
    assert s.class_names == ["a", "b", "c"] and s.tasks == [["a", "b"], ["a", "c"]]
    assert np.bincount(s.y_train).tolist() == [4, 2, 2]
    # each image keeps its task folder: task 2's "a" is not task 1's
    assert np.bincount(s.task_ids[0][s.y_train == 0]).tolist() == [2, 2]
    assert len(s.task_ids[1]) == len(s.y_test)


def test_one_colour_image_makes_the_stream_rgb_with_a_note(tmp_path, capsys):
    root = _tasks(tmp_path, n=(2, 1))
    rgb = np.random.RandomState(9).randint(0, 256, (H, W, 3)).astype(np.uint8)
    _png(root / "task1" / "test" / "d" / "0.png", rgb)
    s = load_stream(root)
    assert s.x_train.shape == (8, H, W, 3) and s.x_test.shape == (4, H, W, 3)
    assert np.array_equal(s.x_test[-1], rgb)
    grey = s.x_train[0]
    assert (grey == grey[..., :1]).all()  # a grey image, its value in every channel
    assert len(s.notes) == 1 and "8-bit RGB" in s.notes[0] and "11 grey (L)" in s.notes[0]
    assert capsys.readouterr() == ("", "")  # the caller tells the notes, not the library


def test_palette_images_are_grey_or_colour_by_their_colours(tmp_path):
    root = _tasks(tmp_path, n=(1, 1))
    with Image.open(root / "task0" / "train" / "a" / "0.png") as img:
        img.convert("P").save(root / "task0" / "train" / "a" / "0.png")  # greys only
    s = load_stream(root)
    assert s.x_train.ndim == 3 and "1 palette (P)" in s.notes[0]
    colour = Image.fromarray(np.full((H, W, 3), (204, 51, 0), np.uint8)).convert("P")
    colour.save(root / "task0" / "train" / "a" / "0.png")
    s = load_stream(root)
    assert s.x_train.shape[-1] == 3 and (s.x_train[0] == (204, 51, 0)).all()


def test_sixteen_bit_png_is_scaled_to_its_high_byte(tmp_path):
    root = tmp_path / "s"
    wide = np.random.RandomState(3).randint(0, 65536, (H, W)).astype(np.uint16)
    for split in ("train", "test"):
        for c in ("x", "y"):
            _png(root / "t" / split / c / "0.png", wide)
    s = load_stream(root)
    assert s.x_train.shape == (2, H, W) and not (s.x_train == 255).all()
    assert np.array_equal(s.x_train[0], (wide >> 8).astype(np.uint8))
    assert "4 16-bit grey (scaled to 8 bits)" in s.notes[0]


def test_folder_refusals_name_the_problem(tmp_path):
    root = _tasks(tmp_path / "r", n=(1, 1))
    _png(root / "task1" / "train" / "c" / "1.png", np.zeros((4, 4), np.uint8))
    _refused(root, os.path.join("task1", "train", "c", "1.png"), "4x4", f"{H}x{W}")
    os.remove(root / "task1" / "train" / "c" / "1.png")
    (root / "task1" / "test" / "e").mkdir()
    (root / "task1" / "test" / "e" / "0.png").write_bytes(b"garbage")
    _refused(root, "task1", "only in test: e", "only in train: none")
    (root / "task1" / "train" / "e").mkdir()
    _refused(root, os.path.join("task1", "train", "e"), "holds no images")
    _png(root / "task1" / "train" / "e" / "0.png", _grey(0))
    _refused(root, os.path.join("task1", "test", "e", "0.png"), "cannot decode",
             "not an image PIL can read")
    (root / "task2" / "train").mkdir(parents=True)
    _refused(root, "task2", "lacks test/")  # before any image is decoded


def test_neither_form_is_refused_with_both_forms(tmp_path):
    flat = tmp_path / "flat"
    _png(flat / "train" / "a" / "0.png", _grey(0))
    _png(flat / "test" / "a" / "0.png", _grey(1))
    _refused(flat, "holds train/ or test/", "DIR/<task>/{train,test}/<class>", ".npz")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", "no task folders", ".npz file with x_train")
    _refused(tmp_path / "missing", "does not exist", "DIR/<task>", ".npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    _refused(tmp_path / "data.csv", "neither a folder nor an .npz", "x_train, y_train")
    (tmp_path / "one" / "t" / "train").mkdir(parents=True)
    (tmp_path / "one" / "t" / "test").mkdir()
    _refused(tmp_path / "one", os.path.join("t", "train"), "holds no class folders")


def _arrays(labels):
    rs = np.random.RandomState(0)
    x = rs.randint(0, 256, (12, 4, 4)).astype(np.uint8)
    y = np.asarray(labels)[np.arange(12) % len(labels)]
    return dict(x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])


def test_npz_round_trip_with_and_without_class_names(tmp_path):
    arrays = _arrays([0, 1, 2])
    np.savez(tmp_path / "named.npz", **arrays, class_names=np.array(["cat", "dog", "emu"]))
    s = load_stream(tmp_path / "named.npz")
    assert s.name == "named.npz" and s.class_names == ["cat", "dog", "emu"] and s.tasks is None
    assert np.array_equal(s.x_train, arrays["x_train"]) and s.y_test.tolist() == [2, 0, 1, 2]
    np.savez(tmp_path / "strings.npz", **_arrays(["owl", "ant"]))
    s = load_stream(str(tmp_path / "strings.npz"))
    assert s.class_names == ["ant", "owl"] and s.y_train.tolist() == [1, 0] * 4
    feats = {k: (v.reshape(len(v), -1) / 255.0 if k[0] == "x" else v)
             for k, v in arrays.items()}
    np.savez(tmp_path / "f.npz", **feats)
    assert read_npz(tmp_path / "f.npz").kind == "features"


def test_npz_refusals_name_the_problem(tmp_path):
    arrays = _arrays([0, 1])
    p = tmp_path / "d.npz"
    np.savez(p, **{k: v for k, v in arrays.items() if k != "y_test"})
    _refused(p, "d.npz", "lacks y_test")
    np.savez(p, **arrays, labels=np.arange(3), extra=np.arange(2))
    _refused(p, "unknown arrays extra, labels", "x_train, y_train, x_test, y_test, class_names")
    np.savez(p, **arrays, class_names=np.array(["a", None], dtype=object))
    _refused(p, "class_names is an object array", "save plain arrays")
    np.savez(p, **arrays, class_names=np.array([["a", "b"]]))
    _refused(p, "class_names must be one name per class")
    p.write_text("x_train,y_train\n")
    _refused(p, str(p), "is not an .npz file")
    with open(p, "wb") as f:
        np.save(f, arrays["x_train"])
    _refused(p, "is one array (.npy)")
    p.write_bytes(b"PK\x03\x04truncated")
    _refused(p, "is not an .npz file")
    np.savez(p, **{**arrays, "x_train": arrays["x_train"].astype(np.int32)})
    _refused(p, "x_train is int32")


def test_unreadable_npz_names_the_os_reason(tmp_path, monkeypatch):
    from bir_keras.data import stream_files

    p = tmp_path / "d.npz"
    np.savez(p, **_arrays([0, 1]))

    def refuse(path, allow_pickle):  # as for a file without read permission (tests run as root)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(stream_files.np, "load", refuse)
    _refused(p, str(p), "cannot read it (Permission denied)", "permissions")
