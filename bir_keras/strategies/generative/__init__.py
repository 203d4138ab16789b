"""Generative replay (GR, method.md 4.1; ``--replay=generative``) and brain-inspired replay
(BI-R, method.md 4.3; ``--brain_inspired``, replay through ``--feedback``), with the Fig. 8
variants that add one BI-R component to GR or take one from BI-R.

    trainer.py     GenerativeReplay: a separate generator (--replay=generative)
    bir.py         BrainInspiredReplay: the classifier is the generator (every --feedback run)
    vae_replay.py  what both share: the VAE's replay, losses, gates, --reinit

This module is the method family's declaration (``METHOD``), read without TensorFlow: its
``--replay`` value, its ``--method`` shorthands, its settings (the VAE's, the separate
generator's, ``--brain_inspired`` and its components, the decoder gates), how BI-R's
defaults follow from its components (``fill``: ``--brain_inspired`` switches on feedback,
the mixture prior, the gates, distillation and, on CIFAR, internal replay with frozen conv
layers; the gate proportion is the paper's for the variant the components make,
``bir_keras.config.DG_PROPS``), its rules, and which Trainer a config runs.
"""

from __future__ import annotations

from bir_keras.settings import POSITIVE, PROPORTION, ConfigError, Method, Setting, Shorthand

# the values of the settings that take one of a few names (``_check`` refuses any other)
PRIORS = ("standard", "gmm")
DG_TYPES = ("class", "task")
Z_DIM = 100


def bir_variant(c, conv_protocol: bool) -> str:
    """Which BI-R variant of the paper the components make (for its gate proportion)."""
    if c.brain_inspired:
        off = [name for name, is_off in (("bir_no_rtf", not c.feedback),
                                         ("bir_no_con", c.prior != "gmm"),
                                         ("bir_no_dis", not c.distill),
                                         ("bir_no_int", conv_protocol and not c.hidden))
               if is_off]
        if len(off) == 1:
            return off[0]
        return "bir_si" if c.si and not off else "bir"
    return "gr_gat"


def gate_proportion(c, conv_protocol: bool, paper) -> float:
    """The paper's gate proportion for the variant ``c`` is (``paper["dg_props"]``, the
    setting's row of ``bir_keras.config.DG_PROPS``; else BI-R's, ``paper["dg_prop"]``)."""
    return float(paper["dg_props"].get(bir_variant(c, conv_protocol), paper.get("dg_prop", 0.0)))


def _fill(c, paper, conv_protocol: bool) -> None:
    # --brain_inspired switches on the five components; each may be switched off alone
    # (e.g. --nofeedback) for the ablations of Fig. 8 (method.md 4.3).
    bi = c.brain_inspired
    if c.feedback is None:
        c.feedback = bi
    if c.prior is None:
        c.prior = "gmm" if bi else "standard"
    if c.dg_gates is None:
        c.dg_gates = bi
    if c.hidden is None:
        c.hidden = bi and conv_protocol
    if c.distill is None:
        c.distill = bi
    if c.dg_prop is None:
        c.dg_prop = gate_proportion(c, conv_protocol, paper)
    if c.dg_gates and c.dg_prop == 0:
        # the authors' code has no gates at proportion 0 (``dg_gates if dg_prop > 0``): say
        # so rather than run another method under this one's name
        c.dg_gates = False
        c.notes = tuple(c.notes) + (f"decoder gates are off: the gate proportion for this "
                                    f"variant on {c.experiment} {c.scenario}-IL is 0 (the "
                                    "paper's grid search), so it runs without them",)
    if c.dg_type is None:
        c.dg_type = paper.get("dg_type", "task" if c.scenario == "domain" else "class")
    if c.freeze_convE is None:
        # every method starts from the pre-trained conv layers; BI-R keeps them frozen
        # (method.md 4.4)
        c.freeze_convE = bool(c.hidden or bi)
    if c.g_fc_units is None:
        c.g_fc_units = c.fc_units
    if c.g_iters is None:
        c.g_iters = c.iters
    if c.lr_gen is None:
        c.lr_gen = c.lr


def _check(c, conv_protocol: bool) -> None:
    if c.prior not in PRIORS:
        raise ConfigError(f"--prior must be {' or '.join(PRIORS)}, got {c.prior!r}")
    if c.dg_type not in DG_TYPES:
        raise ConfigError(f"--dg_type must be {' or '.join(DG_TYPES)}, got {c.dg_type!r}")
    if c.brain_inspired and c.replay != "generative":
        # name the flag the user gave, not the first component it switched on
        raise ConfigError("--brain_inspired is generative replay (BI-R): it needs "
                          f"--replay=generative (got --replay={c.replay})")
    generative_only = dict(feedback=c.feedback, dg_gates=c.dg_gates, reinit=c.reinit)
    if c.prior == "gmm":
        generative_only["prior=gmm"] = True
    for name, on in generative_only.items():
        if on and c.replay != "generative":
            raise ConfigError(f"--{name} is a part of generative replay: it needs --replay=generative")


def _trainer(c) -> str:
    # generative replay through feedback (--feedback, which --brain_inspired switches on)
    # is BI-R's
    return f"{__name__}.bir:BrainInspiredReplay" if c.feedback else \
        f"{__name__}.trainer:GenerativeReplay"


def _gr(**sets) -> Shorthand:
    return Shorthand(dict(replay="generative", **sets))


METHOD = Method(
    name="generative replay",
    replay="generative",
    replay_help="generative (GR / BI-R)",
    shorthands={
        "generative": _gr(),
        "generative_distill": _gr(distill=True),
        "bir": _gr(brain_inspired=True),
        "bir_si": _gr(brain_inspired=True, si=True),
        # Fig. 8: GR plus one BI-R component ...
        "gr_rtf": _gr(feedback=True),
        "gr_con": _gr(prior="gmm"),
        "gr_gat": _gr(dg_gates=True),
        "gr_int": _gr(hidden=True, freeze_convE=True),
        "gr_dis": _gr(distill=True),
        # ... and BI-R minus one component.
        "bir_no_rtf": _gr(brain_inspired=True, feedback=False),
        "bir_no_con": _gr(brain_inspired=True, prior="standard"),
        "bir_no_gat": _gr(brain_inspired=True, dg_gates=False),
        "bir_no_int": _gr(brain_inspired=True, hidden=False),
        "bir_no_dis": _gr(brain_inspired=True, distill=False),
    },
    settings=(
        Setting("z_dim", int, f"VAE latent units (default {Z_DIM})", default=Z_DIM,
                range=(1, 10_000)),
        Setting("g_fc_units", int, "separate generator's hidden units (default = --fc_units)",
                range=(1, 100_000)),
        Setting("g_iters", int, "separate generator's iterations per task (default = --iters)",
                range=(0, 10_000_000)),
        Setting("lr_gen", float, "separate generator's learning rate (default = --lr)",
                kind=POSITIVE),
        Setting("reinit", bool, "re-initialise the networks before each task, after freezing "
                "what is replayed (Fig. 4, default false)", default=False),
        Setting("brain_inspired", bool, "BI-R: --feedback --prior=gmm --dg_gates --distill (+ "
                "--hidden on CIFAR); switch parts off with --nofeedback etc. (default: as "
                "--method sets it, else false)", off=False),
        Setting("feedback", bool, "replay through feedback: the VAE on top of the "
                "classifier"),
        Setting("prior", str, f"VAE prior, {' or '.join(PRIORS)}; gmm = a mode per class "
                "(conditional replay; default gmm with --brain_inspired, else standard)"),
        Setting("dg_gates", bool, "decoder gates chosen by class/task (internal context)"),
        Setting("dg_type", str, f"what selects a decoder gate, {' or '.join(DG_TYPES)} "
                "(default: task on permuted MNIST, else class)"),
        Setting("dg_prop", float, "proportion of decoder units each gate silences, [0, 1) "
                "(default: the paper's grid value)", kind=PROPORTION),
    ),
    distill=True,
    fill=_fill,
    check=_check,
    trainer=_trainer,
)
