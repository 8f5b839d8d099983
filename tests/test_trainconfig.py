"""One trainer base (issue 22): the five training commands keep their options (now generated from the configs'
fields), their defaults, and one error format naming the setting and its flag."""
import math

import pytest

from gradleak.errors import UserError
from gradleak.trainconfig import AutoencoderConfig, EnhancerConfig, GIMLConfig, PriorConfig, TaggerConfig

COMMON = {"--out", "--threads", "--progress", "--no-progress", "--steps", "--seed", "--checkpoint-every"}
DATA = {"--data", "--split", "--resolution", "--channels", "--root", "--batch-size", "--lr"}
# the options of each command before the options were generated (cli.py of issue 21)
OPTIONS = {
    "train-prior": COMMON | DATA | {"--conditional", "--unconditional", "--latent-dim", "--width", "--augment",
                                    "--no-augment", "--sample-every", "--resume", "--no-resume"},
    "train-enhancer": COMMON | DATA | {"--width", "--depth", "--disc-width", "--conditional", "--unconditional",
                                       "--adv-weight", "--crops", "--no-crops", "--max-noise", "--max-blur",
                                       "--rog-pairs", "--rog-iterations"},
    "train-autoencoder": COMMON | DATA | {"--latent-dim", "--downsample", "--width"},
    "train-tagger": COMMON | DATA | {"--width", "--holdout"},
    "giml": COMMON | {"--tasks", "--tasks-per-step", "--tau", "--lambda", "--alpha", "--beta", "--latent-iterations",
                      "--lr-z", "--tv", "--distance", "--prior", "--latent-dim", "--width", "--resume", "--no-resume"},
}
CONFIGS = {"train-prior": PriorConfig, "train-enhancer": EnhancerConfig, "train-autoencoder": AutoencoderConfig,
           "train-tagger": TaggerConfig, "giml": GIMLConfig}


def _command(name):
    from typer.main import get_command

    from gradleak.cli import app

    return get_command(app).commands[name]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_training_commands_keep_their_options_and_defaults(name):
    cmd = _command(name)
    assert {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} == OPTIONS[name]
    cfg = CONFIGS[name]()
    for p in cmd.params:
        if p.name in cfg.__dataclass_fields__:  # the command line's default is the config's (required: none)
            assert p.required == (p.name == "data") and (p.required or p.default == getattr(cfg, p.name)), p.name
    assert cmd.help and all(p.help for p in cmd.params)


def test_trainers_share_fields_and_state_their_own_defaults():
    assert (PriorConfig().steps, EnhancerConfig().steps, AutoencoderConfig().steps, TaggerConfig().steps,
            GIMLConfig().steps) == (3000, 2000, 2000, 1500, 100)
    assert (EnhancerConfig().data, TaggerConfig().channels, AutoencoderConfig().lr) == ("photos", 1, 1e-3)
    assert PriorConfig.help("split") != TaggerConfig.help("split")  # a trainer's own wording of a shared field
    assert "enhancer learns" in EnhancerConfig.help("data")


@pytest.mark.parametrize("cfg,message", [
    (TaggerConfig(lr=math.nan), "train-tagger.lr (--lr): got nan; allowed: a finite number > 0"),
    (AutoencoderConfig(steps=0), "train-autoencoder.steps (--steps): got 0; allowed: an integer >= 1"),
    (EnhancerConfig(checkpoint_every=-3), "train-enhancer.checkpoint_every (--checkpoint-every): got -3; allowed: "
                                          "an integer >= 1"),
    (EnhancerConfig(resolution=40), "train-enhancer.resolution: got 40; allowed: a multiple of 2^depth = 16"),
    (PriorConfig(steps=-1), "train-prior.steps (--steps): got -1; allowed: an integer in 0..10000000"),
    (GIMLConfig(tau=-1), "giml.tau: got -1; allowed: an integer >= 0"),
    (TaggerConfig(holdout=1.0), "train-tagger.holdout (--holdout): got 1.0; allowed: a fraction in [0, 1)"),
])
def test_bad_settings_are_one_line_naming_setting_and_flag(cfg, message):
    with pytest.raises(UserError) as e:
        cfg.check()
    assert str(e.value) == message
    PriorConfig(steps=0, checkpoint_every=0).check()  # train-prior's own rules allow these
