"""The generator: a VAE with a standard-normal or Gaussian-mixture prior (a TFP
distribution, ``VAE.prior``) and decoder gates, and BI-R's RtF model, the same VAE with a
softmax layer on the encoder (method.md 4). Their loss is written once, ``loss_terms``
(reconstruction, latent and, for RtF, classification), used by ``train_step`` and by the
continual-learning methods.

Details follow the authors' code (``models/vae.py`` of GMvandeVen/brain-inspired-replay):
PyTorch's default initialisation, no bias on the layer giving z's log-variance, squared
error as 0.5 x the mean squared error (a unit-variance Gaussian), and the latent term
divided by the number of input *pixels* (fidelity.md items 5, 9, 10).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from bir_keras.models.classifier import HardTargets, Targets
from bir_keras.models.layers import (
    CONV_FEATURES,
    FCStack,
    conv_trunk,
    deconv_decoder,
    dense_gradients,
    float32,
    torch_uniform_init,
)

tfd = tfp.distributions


class VAE(keras.Model):
    """Variational autoencoder; with ``num_outputs > 0`` it is BI-R's RtF classifier.

    ``prior='standard'``: N(0, I). ``prior='gmm'``: one trainable diagonal Gaussian per
    mode (method.md 4.3.2). ``gate_masks``: per decoder hidden layer a ``[contexts, units]``
    0/1 table; a decoder's gate is a ``[batch, contexts]`` weighting of its rows (one-hot
    for a chosen class or task, soft for replayed samples with distillation);
    ``mode_to_gate`` is the context a mode's samples are generated with by default.
    ``latent_divisor`` (default: the input size) divides the latent term.
    """

    def __init__(self, input_shape: tuple[int, ...], fc_units: list[int], z_dim: int = 100,
                 recon_loss: str = "bce", prior: str = "standard", num_modes: int = 1,
                 gate_masks: list[np.ndarray] | None = None,
                 mode_to_gate: np.ndarray | None = None, num_outputs: int = 0,
                 conv: bool = False, latent_divisor: int | None = None, seed: int = 0,
                 salt: int = 2, **kwargs):
        super().__init__(**kwargs)
        if recon_loss not in ("bce", "mse"):
            raise ValueError(f"recon_loss must be 'bce' or 'mse', got {recon_loss!r}")
        if prior not in ("standard", "gmm"):
            raise ValueError(f"prior must be 'standard' or 'gmm', got {prior!r}")
        self.input_shape_ = tuple(input_shape)
        self.input_dim = int(np.prod(input_shape))
        self.latent_divisor = float(latent_divisor or self.input_dim)
        self.z_dim = z_dim
        self.recon = recon_loss
        self.prior_type = prior
        self.num_modes = num_modes
        self.num_outputs = num_outputs
        self.conv = conv
        self.trunk = conv_trunk("vae_trunk") if conv else None
        self.encoder = FCStack(fc_units, name="enc")
        self.z_mean = keras.layers.Dense(z_dim, name="z_mean")
        # the authors' fc_layer_split: the log-variance layer has no bias (fidelity.md 5)
        self.z_logvar = keras.layers.Dense(z_dim, use_bias=False, name="z_logvar")
        self.head = keras.layers.Dense(num_outputs, name="classifier") if num_outputs else None
        self.decoder = FCStack(list(reversed(fc_units)), name="dec")
        if conv:
            self.to_deconv = keras.layers.Dense(CONV_FEATURES, activation="relu", name="dec_to_conv")
            self.deconv = deconv_decoder()
            self.out_layer = None
        else:
            self.out_layer = keras.layers.Dense(self.input_dim, name="dec_out")
        if prior == "gmm":
            # method.md 4.3.2: trainable means and log-variances, initialised from N(0, 1).
            self.prior_means = self.add_weight(shape=(num_modes, z_dim), name="prior_means",
                                               initializer=keras.initializers.RandomNormal(0.0, 1.0))
            self.prior_logvars = self.add_weight(shape=(num_modes, z_dim), name="prior_logvars",
                                                 initializer=keras.initializers.RandomNormal(0.0, 1.0))
        self.gate_masks = (None if gate_masks is None
                           else [tf.constant(m, tf.float32) for m in gate_masks])
        self.num_gates = 0 if gate_masks is None else int(gate_masks[0].shape[0])
        if mode_to_gate is None:
            mode_to_gate = np.arange(num_modes)
        self.mode_to_gate = tf.constant(np.asarray(mode_to_gate, np.int32))
        self.trackers = {k: keras.metrics.Mean(name=k) for k in ("loss", "recon", "latent", "class")}
        self.call(tf.zeros((1, *self.input_shape_)))
        self.built = True
        torch_uniform_init(self, seed, salt=salt)

    # -- the parts -------------------------------------------------------------------
    def encode(self, x: tf.Tensor, training: bool = False):
        """Return (last hidden layer, mu, logvar); mu and logvar in float32."""
        h = self.trunk(x, training=training) if self.trunk is not None else x
        h = self.encoder(h)
        return h, float32(self.z_mean(h)), float32(self.z_logvar(h))

    def classify(self, x: tf.Tensor, task_ids: tf.Tensor | None = None,
                 training: bool = False) -> tf.Tensor:
        """Logits of the RtF softmax layer, which reads the encoder's last hidden layer
        (``task_ids`` is unused: the same call as ``Classifier.classify``)."""
        if self.head is None:
            raise ValueError("this VAE has no classifier head (num_outputs=0)")
        return float32(self.head(self.encode(x, training)[0]))

    def gate_for(self, ids: tf.Tensor) -> tf.Tensor | None:
        """One-hot gate weights ``[batch, contexts]`` for context ids (None without gates)."""
        if self.gate_masks is None:
            return None
        return tf.one_hot(tf.cast(ids, tf.int32), self.num_gates)

    def mode_gate(self, modes: tf.Tensor) -> tf.Tensor | None:
        """The gate a mode's samples are generated with by default."""
        if self.gate_masks is None:
            return None
        return self.gate_for(tf.gather(self.mode_to_gate, modes))

    def decode(self, z: tf.Tensor, gate: tf.Tensor | None = None,
               training: bool = False) -> tf.Tensor:
        """Decoder output before the output non-linearity. ``gate`` [batch, contexts]
        weights the gate tables: each hidden layer is multiplied by ``gate @ mask`` (the
        authors' ``torch.mm(gate_input, gate_mask)``)."""
        gates = None
        if self.gate_masks is not None:
            if gate is None:
                raise ValueError("a gated decoder needs the gate (class or task) of every sample")
            gates = [tf.matmul(gate, m) for m in self.gate_masks]
        h = self.decoder(z, gates=gates)
        if self.conv:
            return float32(self.deconv(self.to_deconv(h), training=training))
        return float32(tf.reshape(self.out_layer(h), (-1, *self.input_shape_)))

    def to_input_space(self, out: tf.Tensor) -> tf.Tensor:
        """Decoder output as an input: pixels in [0, 1] for BCE, unchanged for squared error."""
        return tf.sigmoid(out) if self.recon == "bce" else out

    def call(self, x: tf.Tensor, training: bool = False):
        """Deterministic reconstruction (z = mu, first gate) and, for RtF, the logits."""
        h, mu, _ = self.encode(x, training)
        gate = self.gate_for(tf.zeros(tf.shape(x)[:1], tf.int32))
        out = self.to_input_space(self.decode(mu, gate, training))
        return (out, float32(self.head(h))) if self.head is not None else out

    # -- losses (per sample) ---------------------------------------------------------
    def recon_loss(self, x: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
        """BCE (pixels in [0, 1]) or, for squared error, the negative log-likelihood of a
        unit-variance Gaussian without its constant, 0.5 (x - out)^2, each averaged over
        input elements (the authors' ``calculate_recon_loss``, fidelity.md item 9)."""
        x = tf.reshape(x, (-1, self.input_dim))
        out = tf.reshape(out, (-1, self.input_dim))
        if self.recon == "bce":
            return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out), -1)
        return 0.5 * tf.reduce_mean(tf.square(x - out), -1)

    @property
    def prior(self) -> tfd.MultivariateNormalDiag:
        """The prior over z as a TFP distribution: N(0, I), or for the GMM prior one
        diagonal Gaussian per mode (batch shape ``[num_modes]``) from the trainable means
        and log-variances (method.md 4.3.2); ``components`` gives chosen ones."""
        if self.prior_type == "standard":
            return tfd.MultivariateNormalDiag(loc=tf.zeros([self.z_dim]))
        return self.components(tf.range(self.num_modes))

    def components(self, modes: tf.Tensor) -> tfd.MultivariateNormalDiag:
        """The GMM prior's components for ``modes`` (any shape; batch shape that shape).
        The parameters are gathered before the exponential, as the record this code is
        checked against (benchmarks.equivalence) was computed. The variables are read as
        tensors first: ``tf.gather`` on a variable reads it with ``sparse_read``, past a
        ``keras.StatelessScope`` (which ``strategies.pack`` puts each seed's weights in)."""
        return tfd.MultivariateNormalDiag(
            loc=tf.gather(tf.convert_to_tensor(self.prior_means), modes),
            scale_diag=tf.exp(0.5 * tf.gather(tf.convert_to_tensor(self.prior_logvars), modes)))

    def log_prior(self, z: tf.Tensor, modes: tf.Tensor | None = None,
                  mode_probs: tf.Tensor | None = None,
                  mode_ids: tf.Tensor | None = None) -> tf.Tensor:
        """log p(z) (standard), log p(z|mode), or log sum_k w_k p(z|m_k) for soft weights
        ``mode_probs`` [B, K] over the candidate modes ``mode_ids`` [B, K] (default: all)."""
        if self.prior_type == "standard":
            return tfd.MultivariateNormalDiag(loc=tf.zeros_like(z)).log_prob(z)
        if mode_probs is None:
            return self.components(modes).log_prob(z)
        if mode_ids is None:
            # every mode for every sample: [B, K, z] parameters, as the record's code
            shape = (tf.shape(z)[0], self.num_modes, self.z_dim)
            components = tfd.MultivariateNormalDiag(
                loc=tf.broadcast_to(self.prior_means, shape),
                scale_diag=tf.broadcast_to(tf.exp(0.5 * self.prior_logvars), shape))
        else:
            components = self.components(mode_ids)
        return tfd.MixtureSameFamily(tfd.Categorical(probs=mode_probs), components).log_prob(z)

    def latent_loss(self, z: tf.Tensor, mu: tf.Tensor, logvar: tf.Tensor,
                    modes: tf.Tensor | None = None, mode_probs: tf.Tensor | None = None,
                    mode_ids: tf.Tensor | None = None) -> tf.Tensor:
        """KL (standard prior, analytic) or one-sample log q(z|x) - log p(z|y) (GMM),
        divided by ``latent_divisor`` (method.md 4.1, 4.3.2; fidelity.md item 10)."""
        if self.prior_type == "standard":
            kl = 0.5 * tf.reduce_sum(tf.square(mu) + tf.exp(logvar) - logvar - 1.0, -1)
        else:
            log_q = tfd.MultivariateNormalDiag(loc=mu, scale_diag=tf.exp(0.5 * logvar)).log_prob(z)
            kl = log_q - self.log_prior(z, modes, mode_probs, mode_ids)
        return kl / self.latent_divisor

    def loss_terms(self, x: tf.Tensor, eps: tf.Tensor, targets: Targets | None = None,
                   modes: tf.Tensor | None = None, mode_probs: tf.Tensor | None = None,
                   mode_ids: tf.Tensor | None = None, gate: tf.Tensor | None = None,
                   training: bool = True) -> dict[str, tf.Tensor]:
        """The model's loss, per sample: ``recon`` and ``latent`` and, for RtF with
        ``targets``, ``class`` (on the encoder's last hidden layer). ``train_step`` and
        every continual-learning method use it.

        ``eps`` is the encoder's noise; ``modes`` (or soft ``mode_probs`` over
        ``mode_ids``) select the prior component; ``gate`` [batch, contexts] the decoder
        gates (default: the modes' own gates)."""
        h, mu, logvar = self.encode(x, training)
        z = mu + tf.exp(0.5 * logvar) * eps
        if gate is None and self.gate_masks is not None and modes is not None:
            gate = self.mode_gate(modes)
        out = self.decode(z, gate, training)
        terms = {"recon": self.recon_loss(x, out),
                 "latent": self.latent_loss(z, mu, logvar, modes, mode_probs, mode_ids)}
        if targets is not None:
            if self.head is None:
                raise ValueError("this VAE has no classifier head: it takes no targets")
            terms["class"] = targets.loss(float32(self.head(h)))
        return terms

    # -- sampling --------------------------------------------------------------------
    def prior_sample(self, modes: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """z from the prior (the given modes' components for a GMM prior)."""
        if self.prior_type == "standard":
            return eps
        prior = self.components(modes)
        return prior.loc + prior.scale.diag * eps

    def generate(self, modes: tf.Tensor, eps: tf.Tensor, gate: tf.Tensor | None = None) -> tf.Tensor:
        """Decode prior samples for the given modes into input space, with the given gate
        weights (default: each mode's own gate)."""
        if gate is None:
            gate = self.mode_gate(modes)
        return self.to_input_space(self.decode(self.prior_sample(modes, eps), gate))

    def sample(self, n: int, modes=None, seed: int | None = None) -> tf.Tensor:
        """``n`` samples; ``modes`` (ints, one per sample or a pool to draw from) picks classes."""
        gen = tf.random.Generator.from_seed(seed) if seed is not None else tf.random.get_global_generator()
        if modes is None:
            modes = tf.zeros((n,), tf.int32)
        modes = tf.convert_to_tensor(modes, tf.int32)
        if modes.shape[0] != n:
            pick = gen.uniform((n,), 0, tf.shape(modes)[0], tf.int32)
            modes = tf.gather(modes, pick)
        return self.generate(modes, gen.normal((n, self.z_dim)))

    # -- fit on one task ---------------------------------------------------------------
    @property
    def metrics(self):
        """Loss trackers reset by ``fit``."""
        return list(self.trackers.values())

    def train_step(self, data):
        """One ``fit`` step: data = x or (x, modes), or a dict with ``x`` and optionally
        ``modes`` and the encoder's noise ``eps``. The loss is the sum of the batch means
        of ``loss_terms`` (reconstruction + latent)."""
        if isinstance(data, dict):
            x, modes, eps = data["x"], data.get("modes"), data.get("eps")
        else:
            data = data if isinstance(data, tuple) else (data,)
            x, modes, eps = data[0], data[1] if len(data) > 1 else None, None
        return self.fit_step(x, eps, None, modes)

    def fit_step(self, x: tf.Tensor, eps: tf.Tensor | None, targets: Targets | None,
                 modes: tf.Tensor | None) -> dict[str, tf.Tensor]:
        """Minimise the sum of the batch means of ``loss_terms`` once; update the trackers."""
        if modes is None and (self.prior_type == "gmm" or self.gate_masks is not None):
            raise ValueError("a GMM prior or gated decoder needs the mode of every sample")
        if modes is not None:
            modes = tf.cast(modes, tf.int32)
        if eps is None:
            eps = keras.random.normal((tf.shape(x)[0], self.z_dim))
        with tf.GradientTape() as tape:
            terms = self.loss_terms(x, eps, targets, modes=modes, training=True)
            means = {k: tf.reduce_mean(v) for k, v in terms.items()}
            loss = tf.add_n(list(means.values()))
        grads = dense_gradients(tape.gradient(loss, self.trainable_variables))
        self.optimizer.apply(grads, self.trainable_variables)
        self.trackers["loss"].update_state(loss)
        for k, v in means.items():
            self.trackers[k].update_state(v)
        return {k: t.result() for k, t in self.trackers.items() if k in means or k == "loss"}


class RtFClassifier(VAE):
    """BI-R's combined model: the classifier's hidden layers are the VAE's encoder, a softmax
    layer reads its last hidden layer, and the decoder is the feedback path (method.md 4.3.1)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, fc_units: list[int],
                 **kwargs):
        if num_outputs < 1:
            raise ValueError("RtFClassifier needs at least one output unit")
        super().__init__(input_shape, fc_units, num_outputs=num_outputs, **kwargs)

    def train_step(self, data):
        """One ``fit`` step of the combined model: data = (x, y, active[, modes]) or a dict
        with ``x``, ``y``, ``active`` and optionally ``modes`` and ``eps``. The loss is
        classification + reconstruction + latent (``loss_terms``); a class's mode is its
        output unit unless ``modes`` say otherwise."""
        if isinstance(data, dict):
            x, y, active = data["x"], data["y"], data["active"]
            modes, eps = data.get("modes"), data.get("eps")
        else:
            x, y, active = data[:3]
            modes, eps = data[3] if len(data) > 3 else None, None
        if modes is None and self.prior_type == "gmm":
            modes = y
        return self.fit_step(x, eps, HardTargets(y, active), modes)

