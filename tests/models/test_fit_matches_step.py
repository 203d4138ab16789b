"""Each model owns its loss: ``model.fit`` on one batch of the first task gives the same
first-step losses as the continual-learning step of the same model, batch and noise
(Classifier, VAE with mixture prior and gates, BI-R's RtFClassifier).

The continual step runs without XLA (``jit_compile=False``; ``fit`` compiles without it
too, Keras's "auto" choice for these models): compiling the step took much of the time, the
losses are what is compared, and test_methods checks that XLA trains like the plain step."""

import numpy as np
import pytest
import tensorflow as tf

from bir_keras.strategies.execution import make_adam, pad_samples
from bir_keras.strategies.trainers import make_trainer


def _first_step(tr):
    """The continual step's losses of the first iteration, and its batch and noise."""
    run = tr.start_task(0)
    run = run._replace(data=pad_samples(run.data))
    state = tr.rng.state.numpy()
    weights = {name: net.get_weights() for name, net in tr.networks().items()}
    rows, count = tr.run_steps(run, 1)
    assert count == 1
    losses = dict(zip(tr.loss_names(run), rows[0]))
    # the same draws again: the generator's state and the batch counter rewound
    tr.rng.state.assign(state)
    tr.batch_counter.assign(0)
    # compiled as the step is: under XLA the same random ops give other numbers than eagerly
    draw = tf.function(lambda data, ctx: (tr.draw_batch(data, ctx, run.plan),
                                          tr.draw(ctx, run.plan)),
                       jit_compile=tr.jit_compile or None)
    idx, own = draw(run.data, run.ctx)
    batch = {"x": tr.preprocess(tf.gather(run.data.x, idx)),
             "y": tf.gather(run.data.y, idx),
             "active": tf.gather(run.ctx.active, tf.gather(run.data.tid, idx))}
    if hasattr(own, "eps"):
        batch["eps"] = own.eps
    return losses, batch, weights


def _fit_one_step(model, weights, data):
    model.set_weights(weights)
    model.compile(optimizer=make_adam(1e-3))
    hist = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
    return {k: v[0] for k, v in hist.history.items()}


def test_classifier_fit_matches_the_continual_step(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    losses, b, w = _first_step(tr)
    got = _fit_one_step(tr.make_classifier(), w["model"], (b["x"], b["y"], b["active"]))
    np.testing.assert_allclose(got["loss"], losses["class_current"], rtol=1e-5)


def test_vae_fit_matches_the_generators_continual_step(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, replay="generative", prior="gmm", dg_gates=True,
                            dg_prop=0.5, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    assert tr.generator.prior_type == "gmm" and tr.generator.gate_masks is not None
    losses, b, w = _first_step(tr)
    got = _fit_one_step(tr.make_generator(), w["generator"],
                        {"x": b["x"], "modes": b["y"], "eps": b["eps"]})
    np.testing.assert_allclose(got["recon"], losses["gen_recon_current"], rtol=1e-5)
    np.testing.assert_allclose(got["latent"], losses["gen_latent_current"], rtol=1e-5)
    np.testing.assert_allclose(got["loss"], losses["gen_total"], rtol=1e-5)


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_rtf_fit_matches_the_bir_step(tiny_setup, scenario):
    cfg, proto = tiny_setup(scenario, tasks=2, replay="generative", brain_inspired=True,
                            jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    losses, b, w = _first_step(tr)
    got = _fit_one_step(tr.make_classifier(), w["model"],
                        {"x": b["x"], "y": b["y"], "active": b["active"], "eps": b["eps"]})
    for term in ("class", "recon", "latent"):
        np.testing.assert_allclose(got[term], losses[f"{term}_current"], rtol=1e-5)
    np.testing.assert_allclose(got["loss"], losses["total"], rtol=1e-5)
