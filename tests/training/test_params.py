"""A searchable parameter, declared once: its condition read both ways and written as the README says it."""

import optuna
import pytest

from kilotune.training.config import TrainConfig
from kilotune.training.params import Choice, Condition, Number, Param


@pytest.mark.parametrize(("condition", "text", "holds", "fails"), [
    (Condition("arch", in_=("wrn",)), "arch = wrn", {"arch": "wrn"}, {"arch": "vgg8"}),
    (Condition("arch", not_in=("wrn",)), "arch not wrn", {"arch": "vgg8"}, {"arch": "wrn"}),
    (Condition("schedule", in_=("constant", "cosine")), "schedule in constant, cosine", {"schedule": "cosine"}, {"schedule": "step"}),
    (Condition("arch", in_=("resnet9", "wrn"), label="residual"), "arch is residual", {"arch": "wrn"}, {"arch": "vgg8"}),
])  # fmt: skip
def test_a_condition_reads_the_parameters_sampled_before_it_and_says_so(condition, text, holds, fails):
    assert condition.describe() == text
    assert condition.holds(holds) and not condition.holds(fails)


def test_a_parameter_suggests_assigns_reads_and_describes_itself():
    lr = Param("sgd_learning_rate", Number(1e-3, 1.0, log=True), fields=("learning_rate",), when=Condition("optimizer", in_=("sgd",)))
    assert lr.describe() == "| `sgd_learning_rate` | float [0.001, 1], log | optimizer = sgd |"
    assert lr.sampled({"optimizer": "sgd"}) and not lr.sampled({"optimizer": "adamw"})
    value = lr.suggest(optuna.trial.FixedTrial({"sgd_learning_rate": 0.05}))
    assert lr.assign(value, {"epochs": 3}) == {"learning_rate": 0.05}
    assert lr.read(TrainConfig(learning_rate=0.05)) == 0.05, "read is assign's inverse"
    assert lr.narrow({"low": 0.01}).domain == Number(0.01, 1.0, log=True)
    assert Param("flip", Choice((True, False))).fields == ("flip",), "a parameter sets the field of its own name by default"


def test_an_exact_parameter_never_moves_a_preset_to_another_value():
    arch = Param("arch", Choice(("vgg8",)), exact=True)
    assert arch.nearest("vgg8") == "vgg8" and arch.nearest("wrn") is None
    assert Param("activation", Choice(("relu",))).nearest("gelu") == "relu", "another choice the space fixes is taken"
