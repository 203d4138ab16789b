"""benchmarks/speed.py's FLOP count, against the count written out by hand for the quick
sizes (784-32-32-10 classifier, batch 16 + 16 replayed, z 8): a trained dense layer costs
6 in*out per sample but the first one of each trained network 4 (its inputs need no
gradient, and TensorFlow prunes that matmul); frozen layers 2.

benchmarks.speed defines absl flags that apps.compare also defines, so the counts are
taken in a child process (one for all three methods)."""

import json
import subprocess
import sys

import pytest

B = R = 16
FC1, FC2, OUT = 784 * 32, 32 * 32, 32 * 10
CLASSIFIER = FC1 + FC2 + OUT

CHILD = """
import json
from benchmarks import speed
data = speed.fake_mnist(600, 100)
out = {}
for method in ("none", "lwf", "generative"):
    trainer, _ = speed.make_replay_step("split_mnist", method, True, False, data)
    out[method] = speed.flops_per_iteration(trainer)
    gen = getattr(trainer, "generator", None)
    if gen is not None:
        out["gen"] = {"all": speed.dense_macs(gen), "first": speed.first_kernel_macs(gen),
                      "decoder": speed.dense_macs(gen.decoder, gen.out_layer)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def counts():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_classifier_only(counts):
    trained = (6 * CLASSIFIER - 2 * FC1) * B
    assert counts["none"] == {"trained": trained, "frozen": 0, "total": trained}


def test_lwf_counts_the_frozen_classifier_on_the_replayed_inputs(counts):
    f = counts["lwf"]
    assert f["trained"] == (6 * CLASSIFIER - 2 * FC1) * (B + R)
    assert f["frozen"] == 2 * CLASSIFIER * R


def test_generative_replay_counts_both_networks(counts):
    gen, f = counts["gen"], counts["generative"]
    assert gen["first"] == 784 * 32   # the generator's first encoder layer reads the pixels
    assert f["trained"] == (6 * CLASSIFIER - 2 * FC1 + 6 * gen["all"] - 2 * gen["first"]) * (B + R)
    assert f["frozen"] == 2 * R * (CLASSIFIER + gen["decoder"])
    assert f["total"] == f["trained"] + f["frozen"]
