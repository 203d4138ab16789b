"""Context-dependent gating (XdG, Masse et al.; method.md 3; ``--xdg``, ``--method=xdg``): per
task a fixed random mask silences a proportion of every hidden layer's units. It needs the
task's identity (Task-IL) and composes with any method; its masks are the classifier's
(``bir_keras.models.classifier``, built by ``FineTuning.make_classifier``), so this module is
only its declaration (``METHOD``), read without TensorFlow."""

from __future__ import annotations

from bir_keras.settings import PROPORTION, ConfigError, Method, Setting, Shorthand

# the proportion silenced where the paper's grid search has none (not Task-IL)
PROP = 0.9


def _paper(paper) -> dict:
    return dict(xdg_prop=paper.get("xdg_prop", PROP))


def _fill(c, paper, conv_protocol: bool) -> None:
    if c.xdg_prop is None:
        c.xdg_prop = _paper(paper)["xdg_prop"]


def _check(c, conv_protocol: bool) -> None:
    if c.xdg and c.scenario != "task":
        flag = "--method=xdg" if c.method == "xdg" else "--xdg"
        raise ConfigError(f"XdG needs task identity: {flag} is only allowed with "
                          f"--scenario=task (got --scenario={c.scenario})")
    if c.xdg and c.feedback:
        raise ConfigError("--xdg cannot be combined with --feedback (RtF has no XdG masks)")


METHOD = Method(
    name="XdG",
    switch="xdg",
    settings=(
        Setting("xdg", bool, "context-dependent gating, Task-IL only (default: as --method "
                "sets it, else false)", off=False),
        Setting("xdg_prop", float, "XdG: proportion of hidden units silenced per task, [0, 1)",
                kind=PROPORTION),
    ),
    shorthands={"xdg": Shorthand(dict(xdg=True), _paper)},
    fill=_fill,
    check=_check,
)
