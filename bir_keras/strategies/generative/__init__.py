"""Generative replay (GR, method.md 4.1; ``--replay=generative``) and brain-inspired replay
(BI-R, method.md 4.3; ``--brain_inspired``, replay through ``--feedback``), with the Fig. 8
variants that add one BI-R component to GR or take one from BI-R.

    trainer.py     GenerativeReplay: a separate generator (--replay=generative)
    bir.py         BrainInspiredReplay: the classifier is the generator (every --feedback run)
    vae_replay.py  what both share: the VAE's replay, losses, gates, --reinit

This module is the method family's declaration (``METHOD``: its ``--replay`` value, its
``--method`` shorthands, which Trainer a config runs), read without TensorFlow. Its settings
(``z_dim``, ``brain_inspired`` and the components, the gates, ``g_iters``, ...) are still
fields of ``bir_keras.config.Config``, filled and checked by ``bir_keras.config.resolve``
(BI-R's defaults follow from its components and the paper's per-variant gate table,
``DG_PROPS``).
"""

from __future__ import annotations

from bir_keras.settings import Method, Shorthand


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
    distill=True,
    trainer=_trainer,
)
