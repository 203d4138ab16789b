"""bir_keras.config: each rule about a setting is checked once, by ``resolve`` (``check``,
and ``bir_keras.data.protocols.check_setting`` for the experiment, scenario and number of
tasks); the apps have no validators of their own for these flags. ``method_label`` names a
run's method."""

import dataclasses

import pytest

from bir_keras.config import Config, ConfigError, method_label, resolve, unpackable
from bir_keras.data.protocols import check_setting

NAN, INF = float("nan"), float("inf")

# (Config fields, the start of the one-line refusal): the values the absl validators (and
# enum flags) of apps.common refused before, and the rules moved here from elsewhere (XdG,
# LwF)
REFUSED = [
    (dict(seed=-1), "--seed must be in [0, 2^32), got -1"),
    (dict(seed=2 ** 32), "--seed must be in [0, 2^32)"),
    (dict(gamma=0.0), "--gamma must be in (0, 1], got 0.0"),
    (dict(gamma=1.5), "--gamma must be in (0, 1]"),
    (dict(gamma=NAN), "--gamma must be in (0, 1]"),
    (dict(lr=NAN), "--lr must be a positive finite number, got nan"),
    (dict(lr=0.0), "--lr must be a positive finite number"),
    (dict(lr=INF), "--lr must be a positive finite number"),
    (dict(lr_gen=-1.0), "--lr_gen must be a positive finite number"),
    (dict(temp=0.0), "--temp must be a positive finite number"),
    (dict(epsilon=NAN), "--epsilon must be a positive finite number"),
    (dict(ewc_lambda=-1.0), "--ewc_lambda must be a finite number >= 0, got -1.0"),
    (dict(ewc_lambda=INF), "--ewc_lambda must be a finite number >= 0"),
    (dict(si_c=NAN), "--si_c must be a finite number >= 0"),
    (dict(si_c=-0.5), "--si_c must be a finite number >= 0"),
    # the gate proportions whenever given, with or without XdG / decoder gates
    (dict(xdg_prop=1.0), "--xdg_prop must be in [0, 1), got 1.0"),
    (dict(xdg_prop=-0.1), "--xdg_prop must be in [0, 1)"),
    (dict(scenario="task", xdg=True, xdg_prop=NAN), "--xdg_prop must be in [0, 1)"),
    (dict(dg_prop=1.0), "--dg_prop must be in [0, 1), got 1.0"),
    (dict(replay="generative", brain_inspired=True, dg_prop=2.0), "--dg_prop must be in [0, 1)"),
    (dict(tasks=0), "--tasks must be at least 1, got 0"),
    (dict(tasks=-3), "--tasks must be at least 1"),
    (dict(experiment="split_digits", tasks=6), "--tasks=6: split_digits has 5 tasks of 2 "
                                               "classes (ask for at most --tasks=5)"),
    (dict(experiment="split_imagenet"), "--experiment must be one of split_mnist, "),
    (dict(scenario="classes"), "--scenario must be one of task, domain, class, got 'classes'"),
    (dict(method="bogus"), "--method must be one of none, joint, "),
    # the flags of a few names are plain strings: these are their only check
    (dict(replay="bogus"), "--replay must be none, offline, current, generative or buffer, "
                           "got 'bogus'"),
    (dict(replay="generative", prior="flat"), "--prior must be standard or gmm, got 'flat'"),
    (dict(replay="generative", dg_type="pixel"), "--dg_type must be class or task"),
    (dict(strategy="tpu"), "--strategy must be default, mirrored or multi_worker, got 'tpu'"),
    (dict(iters=0), "--iters must be at least 1, got 0"),
    (dict(batch=0), "--batch must be at least 1"),
    (dict(fc_units=0), "--fc_units must be at least 1"),
    (dict(batch_replay=0), "--batch_replay must be at least 1"),
    (dict(z_dim=0), "--z_dim must be at least 1"),
    (dict(g_fc_units=0), "--g_fc_units must be at least 1"),
    (dict(fisher_n=0), "--fisher_n must be at least 1"),
    (dict(log_every=0), "--log_every must be at least 1, got 0"),
    (dict(eval_batch=0), "eval_batch must be at least 1, got 0"),
    (dict(eval_n=-1), "--eval_n must be >= 0, got -1"),
    (dict(fc_layers=-1), "--fc_layers must be >= 0, got -1"),
    (dict(g_iters=-1), "--g_iters must be >= 0, got -1"),
    # XdG: the flag the user gave is named
    (dict(scenario="class", xdg=True), "XdG needs task identity: --xdg is only allowed with "
                                       "--scenario=task (got --scenario=class)"),
    (dict(scenario="domain", method="xdg", xdg=True),
     "XdG needs task identity: --method=xdg is only allowed with --scenario=task "
     "(got --scenario=domain)"),
    # LwF (moved here from bir_keras.strategies.make_trainer)
    (dict(replay="current", distill=True, batch=32, batch_replay=16),
     "LwF replays the current batch: --batch_replay must equal --batch"),
]


@pytest.mark.parametrize("fields, message", REFUSED, ids=[
    "-".join(f"{k}={v}" for k, v in f.items()) for f, _ in REFUSED])
def test_resolve_refuses_with_one_line_naming_the_flag(fields, message):
    with pytest.raises(ConfigError) as info:
        resolve(Config(**fields))
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize("fields", [
    dict(ewc_lambda=0.0, si_c=0.0), dict(xdg_prop=0.0, dg_prop=0.0), dict(gamma=1.0),
    dict(fc_layers=0, g_iters=0), dict(seed=2 ** 32 - 1), dict(tasks=1),
    dict(experiment="permuted_mnist", scenario="domain", tasks=1000),
    dict(replay="current", distill=True, batch=32),  # --batch_replay defaults to --batch
    dict(scenario="task", method="xdg", xdg=True),
])
def test_resolve_accepts_the_edges(fields):
    resolve(Config(**fields))


def test_conv_protocol_defaults_to_the_experiments():
    assert resolve(Config(experiment="split_cifar100", replay="generative",
                          brain_inspired=True)).hidden
    assert not resolve(Config(experiment="split_mnist", replay="generative",
                              brain_inspired=True)).hidden


def test_check_setting_is_the_protocols_rule():
    check_setting("split_mnist", "class", None)
    check_setting("split_mnist", "class", 5)
    with pytest.raises(ConfigError, match="--tasks=6: split_mnist has 5 tasks"):
        check_setting("split_mnist", "class", 6)


@pytest.mark.parametrize("fields, label", [
    (dict(), "none"),
    (dict(method="bir", replay="generative", brain_inspired=True), "bir"),
    (dict(replay="generative", brain_inspired=True), "generative+brain_inspired"),
    (dict(ewc=True, online=True), "ewc+online"),
    (dict(replay="current", distill=True), "current+distill"),
    (dict(replay="offline", si=True, xdg=True), "offline+si+xdg"),
])
def test_method_label(fields, label):
    c = Config(**fields)
    assert method_label(c) == label
    assert method_label(dataclasses.replace(c, seed=3)) == label  # the seed is not a method


def test_run_name_uses_the_method_label():
    from apps.common import run_name

    bir = resolve(Config(method="bir", replay="generative", brain_inspired=True))
    assert run_name(bir) == "split_mnist-class-bir-s0"
    assert run_name(Config(ewc=True, online=True, seed=2)) == "split_mnist-class-ewc-online-s2"
    assert run_name(Config(replay="current", distill=True)) == \
        "split_mnist-class-current-distill-s0"
    assert run_name(Config()) == "split_mnist-class-none-s0"


def test_a_named_method_in_the_library_is_that_method():
    # Config(method="bir") is BI-R, as --method=bir is (it once ran a plain classifier
    # labelled "bir"); a field set against the method is refused
    c = resolve(Config(method="bir"))
    assert (c.replay, c.brain_inspired, c.feedback, c.prior, c.distill, c.dg_gates) == \
        ("generative", True, True, "gmm", True, True)
    assert resolve(Config(method="bir_no_dis")).distill is False
    assert resolve(Config(method="online_ewc")).online and resolve(Config(method="si")).si
    with pytest.raises(ConfigError, match="--method=bir sets --replay=generative: it cannot be "
                                          "run with --replay=current"):
        resolve(Config(method="bir", replay="current"))
    with pytest.raises(ConfigError, match="--method=lwf sets --distill=true"):
        resolve(Config(method="lwf", distill=False))


@pytest.mark.parametrize("fields, says", [
    (dict(experiment="split_mnist", replay="generative"), None),
    (dict(experiment="split_mnist", strategy="mirrored"), "one device"),
    (dict(experiment="split_mnist", jit_compile=True), "drop --jit_compile"),
    (dict(experiment="split_mnist", jit_compile=False), None),
    # CIFAR: conv layers in the step (pixel level) cannot be packed; cached features can
    (dict(experiment="split_cifar100", replay="generative"), "pixel-level CIFAR"),
    (dict(experiment="split_cifar100", replay="generative", hidden=True,
          freeze_convE=True), None),
    (dict(experiment="split_cifar100", ewc=True, freeze_convE=True), None),
])
def test_unpackable_says_why_seeds_cannot_share_a_step(fields, says):
    why = unpackable(resolve(Config(**fields)))
    assert why is None if says is None else says in why


def test_config_and_its_rules_come_from_the_methods_declarations():
    # each declared setting is a Config field with its default; each shorthand a --method;
    # each --replay value a method's; an integer's range and a float's kind are checked
    from bir_keras.config import FLOAT_KINDS, INT_RANGES, METHODS, REPLAYS
    from bir_keras.strategies import DECLARATIONS

    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    for m in DECLARATIONS:
        for s in m.settings:
            assert fields[s.name] == s.default, s.name
            assert s.range is None or INT_RANGES[s.name] == s.range
            assert s.kind is None or FLOAT_KINDS[s.name] == s.kind
        assert set(m.shorthands) <= set(METHODS)
    assert REPLAYS == tuple(m.replay for m in DECLARATIONS if m.replay)
    assert REPLAYS[:4] == ("none", "offline", "current", "generative")
    with pytest.raises(ConfigError, match="--fisher_n must be at least 1"):
        resolve(Config(fisher_n=0))


def test_the_registry_refuses_declarations_that_clash():
    from bir_keras.settings import Method, Setting, Shorthand, check_registry

    a = Method("a", replay="a", shorthands={"x": Shorthand({})},
               settings=(Setting("k", int, "help"),))
    check_registry((a,))
    for bad, says in [
        ((a, Method("b", replay="a")), "--replay value 'a' is declared twice"),
        ((a, Method("b", replay="b", shorthands={"x": Shorthand({})})), "--method 'x'"),
        ((a, Method("b", replay="b", settings=(Setting("k", int, "h"),))), "setting 'k'"),
        ((Method("c"),), "not both or neither"),
        ((Method("c", replay="c", switch="c"),), "not both or neither"),
        ((Method("c", switch="on", settings=(Setting("on", int, "h"),)),), "bool settings"),
    ]:
        with pytest.raises(ValueError, match=says):
            check_registry(bad)


def test_memory_estimate_takes_the_protocols_input_sizes(monkeypatch):
    # permuted MNIST is zero-padded to 32 x 32 (1024 values), split MNIST flattened 28 x 28
    from bir_keras import appfiles, memory
    from bir_keras.config import Config

    def need(experiment):
        return memory.memory_estimate(Config(experiment=experiment, fc_units=1000, fc_layers=1,
                                            batch=1))[0]

    assert need("permuted_mnist") == 8 * 4 * 1024 * 1000
    assert need("split_mnist") == 8 * 4 * 784 * 1000 and need("split_digits") == 8 * 4 * 64 * 1000
    monkeypatch.setattr(appfiles, "available_memory", lambda: 2 ** 20)
    with pytest.raises(memory.NotEnoughMemory, match="lower --fc_units"):
        memory.check_memory(Config(experiment="split_mnist", fc_units=1000, batch=1))
    monkeypatch.setattr(appfiles, "available_memory", lambda: None)   # unknown: not refused
    assert "--fc_units" in memory.check_memory(Config(experiment="split_mnist", fc_units=1000))
