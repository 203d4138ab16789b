"""Models: masked softmax, VAE losses, the mixture prior, gates and sampling."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from bir_keras.models.classifier import Classifier, distillation_loss, masked_cross_entropy
from bir_keras.models.layers import FCStack, conv_trunk, make_gate_masks, make_unit_masks
from bir_keras.models.vae import VAE, RtFClassifier


def test_masked_softmax_ignores_inactive_units():
    logits = tf.constant([[1.0, 2.0, 50.0, -3.0]])
    active = tf.constant([[1.0, 1.0, 0.0, 0.0]])
    ce = masked_cross_entropy(logits, tf.constant([1]), active)
    expected = -math.log(math.exp(2) / (math.exp(1) + math.exp(2)))
    assert float(ce[0]) == pytest.approx(expected, rel=1e-5)
    changed = tf.constant([[1.0, 2.0, -80.0, 999.0]])
    assert float(masked_cross_entropy(changed, tf.constant([1]), active)[0]) == pytest.approx(
        expected, rel=1e-5)


def test_distillation_matches_formula():
    z_new = tf.constant([[0.5, -1.0, 3.0]])
    p_old = tf.constant([[0.3, 0.7, 0.0]])
    active = tf.constant([[1.0, 1.0, 1.0]])
    t = 2.0
    log_p = tf.nn.log_softmax(z_new / t).numpy()[0]
    expected = -(t ** 2) * (0.3 * log_p[0] + 0.7 * log_p[1])
    assert float(distillation_loss(z_new, p_old, active, t)[0]) == pytest.approx(expected, rel=1e-5)


def test_classifier_fit_on_one_task():
    rng = np.random.RandomState(0)
    x = rng.rand(64, 10).astype("float32")
    y = (x[:, 0] > 0.5).astype("int32")
    active = np.tile([[1, 1, 0, 0]], (64, 1)).astype("float32")
    model = Classifier((10,), 4, [16])
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    hist = model.fit(tf.data.Dataset.from_tensor_slices((x, y, active)).batch(64), epochs=30, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0] * 0.5


def test_vae_loss_equals_hand_computation():
    vae = VAE((3,), [4], z_dim=2, recon_loss="bce")
    x = tf.constant([[0.0, 0.5, 1.0], [1.0, 0.2, 0.0]])
    eps = tf.constant([[0.1, -0.2], [0.3, 0.0]])
    terms = vae.loss_terms(x, eps)
    recon, latent = terms["recon"], terms["latent"]
    h, mu, logvar = vae.encode(x)
    z = mu + tf.exp(0.5 * logvar) * eps
    out = tf.sigmoid(vae.decode(z)).numpy()
    xn = x.numpy()
    bce = -(xn * np.log(out) + (1 - xn) * np.log(1 - out)).mean(-1)
    np.testing.assert_allclose(recon.numpy(), bce, rtol=1e-4)
    mu, logvar = mu.numpy(), logvar.numpy()
    kl = 0.5 * (mu ** 2 + np.exp(logvar) - logvar - 1).sum(-1) / 3
    np.testing.assert_allclose(latent.numpy(), kl, rtol=1e-4)


def test_kl_zero_for_standard_normal_posterior():
    vae = VAE((5,), [4], z_dim=3)
    zero = tf.zeros((2, 3))
    assert np.allclose(vae.latent_loss(zero, zero, zero).numpy(), 0.0)
    assert float(vae.latent_loss(zero, zero + 1.0, zero)[0]) > 0


def test_mixture_prior_log_density_equals_hand_computation():
    vae = VAE((4,), [6], z_dim=2, prior="gmm", num_modes=3)
    means = np.array([[0.0, 1.0], [2.0, -1.0], [-1.0, 0.5]], np.float32)
    logvars = np.array([[0.0, 0.5], [-0.5, 0.2], [0.3, 0.3]], np.float32)
    vae.prior_means.assign(means)
    vae.prior_logvars.assign(logvars)
    z = np.array([[0.3, 0.2], [1.0, -2.0]], np.float32)

    def log_n(z, m, lv):
        return float(np.sum(-0.5 * (np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv))))

    got = vae.log_prior(tf.constant(z), modes=tf.constant([1, 2])).numpy()
    np.testing.assert_allclose(got, [log_n(z[0], means[1], logvars[1]),
                                     log_n(z[1], means[2], logvars[2])], rtol=1e-5)
    w = np.array([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]], np.float32)
    got = vae.log_prior(tf.constant(z), mode_probs=tf.constant(w)).numpy()
    for i in range(2):
        expected = np.log(sum(w[i, m] * np.exp(log_n(z[i], means[m], logvars[m]))
                              for m in range(3) if w[i, m] > 0))
        assert got[i] == pytest.approx(expected, rel=1e-5)


def test_xdg_masks_silence_proportion_and_differ():
    masks = make_unit_masks(4, 50, 0.8, seed=0)
    assert masks.shape == (4, 50)
    np.testing.assert_array_equal(masks.sum(1), [10] * 4)  # int(0.8 * 50) off, as the authors
    assert not np.array_equal(masks[0], masks[1])
    with pytest.raises(ValueError):
        make_unit_masks(2, 10, 1.0, seed=0)


def test_decoder_gates_silence_each_unit_with_the_proportion():
    # the authors' fc_layer_fixed_gates: each unit off with probability prop, independently
    masks = make_gate_masks(200, 400, 0.8, seed=0)
    assert set(np.unique(masks)) == {0.0, 1.0}
    off = 1.0 - masks.mean(1)
    assert abs(off.mean() - 0.8) < 0.01 and off.std() > 0.005  # varies per context
    with pytest.raises(ValueError):
        make_gate_masks(2, 10, 1.0, seed=0)


def test_conditional_samples_come_from_mode_and_carry_its_gate():
    gates = [make_gate_masks(3, 6, 0.5, seed=1)]
    vae = VAE((4,), [6], z_dim=2, prior="gmm", num_modes=3, gate_masks=gates)
    vae.prior_means.assign([[10.0, 10.0], [-10.0, -10.0], [0.0, 0.0]])
    vae.prior_logvars.assign(np.full((3, 2), -20.0, np.float32))
    z = vae.prior_sample(tf.constant([0, 1]), tf.random.normal((2, 2)))
    np.testing.assert_allclose(z.numpy(), [[10, 10], [-10, -10]], atol=1e-3)
    # the decoder's hidden units are silenced by the mode's gate
    gated = vae.decoder(z[:1], gates=[tf.constant(gates[0][:1])])
    np.testing.assert_array_equal(gated.numpy()[0][gates[0][0] == 0], 0.0)
    x = vae.generate(tf.constant([0, 2]), tf.random.normal((2, 2)))
    manual = tf.sigmoid(vae.decode(vae.prior_sample(tf.constant([0, 2]), tf.zeros((2, 2))),
                                   tf.one_hot([0, 2], 3)))
    np.testing.assert_allclose(x.numpy(), manual.numpy(), atol=1e-3)


def test_soft_decoder_gate_is_the_softmax_weighted_masks():
    # fidelity.md item 13: with distillation a replayed sample's gate is
    # softmax(old scores / T) @ class masks on every gated layer (after the bias and ReLU)
    gates = [make_gate_masks(3, 5, 0.5, seed=2), make_gate_masks(3, 5, 0.5, seed=3)]
    vae = VAE((4,), [5, 5], z_dim=2, gate_masks=gates)
    scores = np.array([[2.0, 0.5, -1.0]], np.float32)
    w = np.exp(scores / 2.0) / np.exp(scores / 2.0).sum()
    z = tf.constant([[0.7, -0.3]])
    got = vae.decode(z, tf.constant(w)).numpy()
    dec = vae.decoder.layers_
    h = z.numpy()
    for layer, g in zip(dec, gates):
        h = np.maximum(h @ layer.kernel.numpy() + layer.bias.numpy(), 0) * (w @ g)
    expected = h @ vae.out_layer.kernel.numpy() + vae.out_layer.bias.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_squared_error_is_half_the_mean_squared_error():
    # fidelity.md item 9: -log N(x; out, I) without its constant, averaged over elements
    vae = VAE((3,), [4], z_dim=2, recon_loss="mse")
    x = tf.constant([[0.0, 0.5, 1.0]])
    out = tf.constant([[1.0, 0.5, -1.0]])
    assert float(vae.recon_loss(x, out)[0]) == pytest.approx(0.5 * (1 + 0 + 4) / 3, rel=1e-6)


def test_latent_term_is_divided_by_the_input_pixels():
    # fidelity.md item 10: 3072 on CIFAR also when the VAE reconstructs 1024 conv features
    vae = VAE((1024,), [8], z_dim=2, latent_divisor=3072)
    mu, logvar = tf.constant([[1.0, 2.0]]), tf.zeros((1, 2))
    assert vae.latent_divisor == 3072
    assert float(vae.latent_loss(mu, mu, logvar)[0]) == pytest.approx(0.5 * 5 / 3072, rel=1e-6)
    assert VAE((16,), [8], z_dim=2).latent_divisor == 16


def test_pytorch_default_initialisation_and_no_logvar_bias():
    # fidelity.md item 5: weights and biases uniform in +-1/sqrt(fan_in)
    vae = VAE((300,), [200], z_dim=20, seed=0)
    assert vae.z_logvar.bias is None and vae.z_mean.bias is not None
    for layer, fan_in in ((vae.encoder.layers_[0], 300), (vae.z_mean, 200), (vae.out_layer, 200)):
        bound = 1 / np.sqrt(fan_in) * (1 + 1e-6)
        k, b = layer.kernel.numpy(), layer.bias.numpy()
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
        assert abs(k.std() - bound / np.sqrt(3)) < 0.1 * bound  # uniform, not normal
        assert np.abs(b).max() <= bound and np.abs(b).max() > 0.5 * bound  # not zeros
    c = Classifier((50,), 10, [40], seed=1)
    assert np.abs(c.head.bias.numpy()).max() > 0.5 / np.sqrt(40)  # biases are not zero
    assert np.abs(c.head.bias.numpy()).max() <= 1 / np.sqrt(40)
    trunk_model = Classifier((32, 32, 3), 4, [8], conv=True, seed=0)
    k = trunk_model.trunk.get_layer("conv2").kernel.numpy()  # 3x3x16 -> fan_in 144
    assert np.abs(k).max() <= 1 / 12 and np.abs(k).max() > 0.95 / 12
    assert not np.allclose(Classifier((50,), 10, [40], seed=2).head.kernel.numpy(),
                           c.head.kernel.numpy())


def test_xdg_mask_multiplies_before_the_bias():
    # fidelity.md item 8: a masked unit still outputs relu(bias)
    stack = FCStack([4])
    stack.build((None, 3))
    layer = stack.layers_[0]
    layer.bias.assign([0.5, -0.5, 1.0, 2.0])
    x = tf.constant([[1.0, 2.0, 3.0]])
    mask = tf.constant([[0.0, 0.0, 1.0, 0.0]])
    out = stack(x, masks=[mask]).numpy()[0]
    z = (x.numpy() @ layer.kernel.numpy())[0]
    np.testing.assert_allclose(out, [0.5, 0.0, max(z[2] + 1.0, 0.0), 2.0], rtol=1e-6)


def test_last_conv_layer_is_linear():
    # fidelity.md items 4 and 6: no batch-norm or ReLU after conv5; PyTorch's BN settings
    trunk = conv_trunk()
    names = [layer.name for layer in trunk.layers]
    assert names[-2:] == ["conv5", "flatten"] and "bn5" not in names and "relu5" not in names
    bn = trunk.get_layer("bn1")
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
    x = np.random.RandomState(0).rand(8, 32, 32, 3).astype("float32")
    feats = trunk(x, training=False).numpy()
    assert feats.shape == (8, 1024) and feats.min() < 0 and (feats < 0).mean() > 0.2


@pytest.mark.parametrize("recon", ["bce", "mse"])
def test_samples_have_input_shape_and_range(recon):
    vae = VAE((8, 8, 1), [16], z_dim=4, recon_loss=recon)
    x = vae.sample(7, seed=1)
    assert x.shape == (7, 8, 8, 1)
    if recon == "bce":
        assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 1


def test_rtf_classifier_shares_encoder_and_fits():
    rng = np.random.RandomState(0)
    x = rng.rand(64, 12).astype("float32")
    y = (x[:, 0] > 0.5).astype("int32")
    active = np.tile([[1, 1]], (64, 1)).astype("float32")
    m = RtFClassifier((12,), 2, [16], z_dim=3, prior="gmm", num_modes=2)
    h, _, _ = m.encode(tf.constant(x))
    np.testing.assert_allclose(m.classify(tf.constant(x)).numpy(), m.head(h).numpy(), rtol=1e-6)
    m.compile(optimizer=keras.optimizers.Adam(0.02))
    hist = m.fit(tf.data.Dataset.from_tensor_slices((x, y, active)).batch(64), epochs=40, verbose=0)
    assert hist.history["class"][-1] < hist.history["class"][0]


def test_vae_fit_alone_reduces_loss():
    x = (np.random.RandomState(0).rand(128, 16) > 0.5).astype("float32")
    vae = VAE((16,), [32], z_dim=4)
    vae.compile(optimizer=keras.optimizers.Adam(0.01))
    hist = vae.fit(x, epochs=20, batch_size=64, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
