"""The flagfiles in apps/configs are what bir_keras.config gives for each paper run."""

from benchmarks import flagfiles


def test_flagfiles_are_up_to_date():
    assert flagfiles.main(["--check"]) == 0


def test_flagfiles_spell_out_the_variants_gate_proportions():
    files = {p.name: t for p, t in flagfiles.expected().items()}
    assert "--dg_prop=0.7" in files["split_cifar100_class_bir.cfg"]
    assert "--dg_prop=0.9" in files["split_cifar100_class_bir_no_int.cfg"]
    assert "--dg_prop=0.2" in files["permuted_mnist_domain_gr_gat.cfg"]
    assert "--dg_prop=0.8" in files["split_mnist_task_bir.cfg"]
    # a variant whose gates are off says so
    assert "# note: decoder gates are off" in files["split_cifar100_task_bir.cfg"]
    assert "--tasks=100" in files["permuted_mnist_domain_bir.cfg"]
