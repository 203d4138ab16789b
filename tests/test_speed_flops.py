"""benchmarks/speed.py's FLOP count, against the count written out by hand for the quick
sizes (784-32-32-10 classifier, batch 16 + 16 replayed, z 8): a trained dense layer costs
6 in*out per sample but the first one of each trained network 4 (its inputs need no
gradient, and TensorFlow prunes that matmul); frozen layers 2."""

import pytest

from benchmarks import speed

B = R = 16
FC1, FC2, OUT = 784 * 32, 32 * 32, 32 * 10
CLASSIFIER = FC1 + FC2 + OUT


@pytest.fixture(scope="module")
def data():
    return speed.fake_mnist(600, 100)


def _flops(method, data):
    trainer, _ = speed.make_replay_step("split_mnist", method, True, False, data)
    return speed.flops_per_iteration(trainer)


def test_classifier_only(data):
    f = _flops("none", data)
    assert f == {"trained": (6 * CLASSIFIER - 2 * FC1) * B, "frozen": 0,
                 "total": (6 * CLASSIFIER - 2 * FC1) * B}


def test_lwf_counts_the_frozen_classifier_on_the_replayed_inputs(data):
    f = _flops("lwf", data)
    assert f["trained"] == (6 * CLASSIFIER - 2 * FC1) * (B + R)
    assert f["frozen"] == 2 * CLASSIFIER * R


def test_generative_replay_counts_both_networks(data):
    trainer, _ = speed.make_replay_step("split_mnist", "generative", True, False, data)
    gen = trainer.generator
    vae = speed.dense_macs(gen)
    first = speed.first_kernel_macs(gen)
    assert first == 784 * 32          # the generator's first encoder layer reads the pixels
    f = speed.flops_per_iteration(trainer)
    assert f["trained"] == (6 * CLASSIFIER - 2 * FC1 + 6 * vae - 2 * first) * (B + R)
    assert f["frozen"] == 2 * R * (CLASSIFIER + speed.dense_macs(gen.decoder, gen.out_layer))
    assert f["total"] == f["trained"] + f["frozen"]
