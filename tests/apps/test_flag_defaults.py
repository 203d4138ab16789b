"""The training flags take their defaults from ``Config`` (the one home of the defaults):
a flag per ``Config`` field, with ``Config``'s default, and its help text says that value."""

import json
import subprocess
import sys
import textwrap

from tests.apps.test_sample import ENV, ROOT

SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    from absl import flags
    from apps import common
    from bir_keras import config

    if sys.argv[1] == "change":   # a changed default in Config changes the flag and its help
        @dataclasses.dataclass
        class Changed(config.Config):
            fc_layers: int = 7

        config.Config = common.Config = Changed
    common.define_train_flags()
    flags.FLAGS(["x"] + sys.argv[2:])
    fields = {f.name: f.default for f in dataclasses.fields(config.Config)}
    out = {"flags": {n: [flags.FLAGS[n].default, flags.FLAGS[n].help]
                     for n in fields if n in flags.FLAGS},
           "config": fields,
           "from_flags": dataclasses.asdict(common.config_from_flags(flags.FLAGS)),
           "tf": "tensorflow" in sys.modules}
    print(json.dumps(out))
""")


def _run(change: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, change, *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_every_config_field_flag_defaults_to_config():
    out = _run("same")
    assert not out["tf"]    # flags are defined without loading TensorFlow
    missing = set(out["config"]) - set(out["flags"]) - {"eval_batch", "notes"}
    assert not missing, f"Config fields without a flag: {missing}"
    for name, (default, _) in out["flags"].items():
        assert default == out["config"][name], name
    helps = {n: h for n, (_, h) in out["flags"].items()}
    assert "(default 2)" in helps["fc_layers"] and "(default 1000)" in helps["fisher_n"]
    # each --replay value with its method's words (a method's own flag: its tests, e.g.
    # tests/strategies/test_buffer.py)
    assert "current (LwF)" in helps["replay"] and "generative (GR / BI-R)" in helps["replay"]


def test_changed_config_default_changes_flag_and_help():
    out = _run("change")
    default, help_text = out["flags"]["fc_layers"]
    assert default == 7 and "(default 7)" in help_text
