"""BI-R's components: --brain_inspired switches all on; each ablation flag removes one."""

import dataclasses

import pytest

from bir_keras.config import method_settings
from bir_keras.models.vae import VAE, RtFClassifier
from bir_keras.strategies.trainers import make_trainer


def _diff(a, b):
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_brain_inspired_switches_on_every_component(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, **method_settings("bir", "split_digits", "class"))
    assert cfg.feedback and cfg.prior == "gmm" and cfg.dg_gates and cfg.distill
    assert cfg.dg_prop == 0.8 and not cfg.hidden  # no conv layers on digits: no internal replay
    tr = make_trainer(cfg, proto, verbose=False)
    assert isinstance(tr.model, RtFClassifier) and list(tr.networks()) == ["model"]
    assert tr.model.prior_type == "gmm" and tr.model.prior_means.shape == (proto.num_modes, 8)
    assert tr.model.gate_masks is not None


@pytest.mark.parametrize("ablation, field", [
    ("bir_no_rtf", "feedback"), ("bir_no_con", "prior"), ("bir_no_gat", "dg_gates"),
    ("bir_no_dis", "distill"),
])
def test_each_ablation_changes_exactly_its_component(tiny_setup, ablation, field):
    full, proto = tiny_setup("class", tasks=2, **method_settings("bir", "split_digits", "class"))
    abl, _ = tiny_setup("class", tasks=2, **method_settings(ablation, "split_digits", "class"))
    assert _diff(full, abl) == {field}
    tr = make_trainer(abl, proto, verbose=False)
    if field == "feedback":
        assert isinstance(tr.generator, VAE) and not isinstance(tr.model, RtFClassifier)
        assert tr.generator.prior_type == "gmm" and tr.generator.gate_masks is not None
    elif field == "prior":
        assert isinstance(tr.model, RtFClassifier) and tr.model.prior_type == "standard"
    elif field == "dg_gates":
        assert tr.model.gate_masks is None and tr.model.prior_type == "gmm"
    else:
        assert not abl.distill and isinstance(tr.model, RtFClassifier)


@pytest.mark.parametrize("addition, field", [
    ("gr_rtf", "feedback"), ("gr_con", "prior"), ("gr_gat", "dg_gates"), ("gr_dis", "distill"),
])
def test_each_addition_adds_exactly_its_component(tiny_setup, addition, field):
    gr, _ = tiny_setup("class", tasks=2, **method_settings("generative", "split_digits", "class"))
    add, _ = tiny_setup("class", tasks=2, **method_settings(addition, "split_digits", "class"))
    assert _diff(gr, add) == {field}


def test_bir_si_protects_encoder_and_classifier_only(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, **method_settings("bir_si", "split_digits", "class"))
    tr = make_trainer(cfg, proto, verbose=False)
    names = {v.path for v in tr.regularizers[0].vars}
    assert any("enc" in n for n in names) and any("classifier" in n for n in names)
    assert not any(n.startswith("dec") or "/dec" in n or "prior" in n or "z_" in n for n in names)
