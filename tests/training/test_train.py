"""The training core on tiny random data: reports, augmentation paths, divergence, resume."""

import numpy as np
import pytest

from kilotune.training.config import TrainConfig
from kilotune.training.train import EpochReport, TrainData, evaluate, train
from tests.conftest import run_bounded

pytestmark = pytest.mark.slow  # every test here trains a model
TINY = TrainConfig(arch="vgg8", width=0.125, epochs=2, batch_size=16, seed=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = np.arange(64) % 4
    # Class-dependent brightness so a model can learn something in a few epochs.
    x = (rng.integers(0, 60, (64, 16, 16, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    return TrainData(x[:48], y[:48], x[48:], y[48:], num_classes=4)


def test_reports_every_epoch_with_accuracy_and_throughput(data):
    reports: list[EpochReport] = []
    result = train(TINY, data, [reports.append])
    assert result.status == "complete"
    assert [r.epoch for r in reports] == [1, 2] and result.history == reports
    for r in reports:
        assert 0.0 <= r.val_accuracy <= 1.0 and np.isfinite(r.loss)
        assert r.seconds > 0 and r.images_per_second == pytest.approx(48 / r.seconds)
    assert result.params > 0 and 0.0 <= evaluate(result, data.x_val, data.y_val, flip_tta=True) <= 1.0


def test_mixup_and_cutmix_go_through_the_batch_pipeline(data):
    config = TINY.replace(mixup_alpha=0.4, cutmix_alpha=1.0, cutout=4, schedule="cosine", warmup_epochs=1)
    result = train(config, data)
    assert result.status == "complete" and len(result.history) == 2


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "cosine_restarts", "onecycle"])
def test_every_schedule_and_adamw_train(data, schedule):
    result = train(TINY.replace(schedule=schedule, optimizer="adamw", learning_rate=1e-3, epochs=1), data)
    assert result.status == "complete"


def test_a_diverging_run_stops_with_status_instead_of_raising(data):
    wild = TINY.replace(learning_rate=10.0, momentum=0.99, batch_norm=False, schedule="constant",
                        weight_decay=0.0, label_smoothing=0.0, epochs=20)
    result = train(wild, data)
    assert result.status == "diverged"
    assert len(result.history) < 20


def test_a_callback_that_raises_stops_training_and_propagates(data):
    class Pruned(Exception):
        pass

    def prune_after_first(report):
        raise Pruned(report.epoch)

    with pytest.raises(Pruned, match="1"):
        train(TINY.replace(epochs=5), data, [prune_after_first])


def test_resumes_from_checkpoint_without_repeating_epochs(data, tmp_path):
    seen: list[int] = []
    train(TINY, data, [lambda r: seen.append(r.epoch)], checkpoint_dir=tmp_path)
    result = train(TINY.replace(epochs=4), data, [lambda r: seen.append(r.epoch)], checkpoint_dir=tmp_path)
    assert seen == [1, 2, 3, 4]
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert int(result.model.optimizer.iterations.numpy() if hasattr(result.model.optimizer.iterations, "numpy") else result.model.optimizer.iterations) == 4 * 3
    assert len(list(tmp_path.glob("epoch-*.keras"))) == 1


def test_the_training_core_runs_under_jax(tmp_path):
    """The same config, augmentation, mixing and checkpoint-resume code under KERAS_BACKEND=jax."""
    import os
    import sys

    pytest.importorskip("jax")
    code = f"""
import keras, numpy as np
from kilotune.training.config import TrainConfig
from kilotune.training.train import TrainData, train
rng = np.random.default_rng(0)
y = np.arange(48) % 4
x = (rng.integers(0, 60, (48, 16, 16, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
data = TrainData(x[:32], y[:32], x[32:], y[32:], num_classes=4)
config = TrainConfig(arch="resnet9", width=0.125, epochs=1, batch_size=16, mixup_alpha=0.2, cutmix_alpha=1.0)
train(config, data, checkpoint_dir={str(tmp_path)!r})
result = train(config.replace(epochs=2), data, checkpoint_dir={str(tmp_path)!r})
print(keras.backend.backend(), result.status, [r.epoch for r in result.history])
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = run_bounded([sys.executable, "-c", code], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "jax complete [1, 2]"


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("augmentation", [dict(policy="randaugment", randaugment_ops=3, randaugment_magnitude=0.9),
                                          dict(policy="augmix"), dict(random_erasing=0.5)])  # fmt: skip
def test_every_policy_trains_in_the_model_on_colour_and_grayscale_and_resumes(data, tmp_path, channels, augmentation):
    """Issue 27: Keras' RandAugment, AugMix and RandomErasing run inside the model (traced with the
    step), on 1 and 3 channels, and a checkpoint with them reloads."""
    gray = TrainData(data.x_train[..., :channels], data.y_train, data.x_val[..., :channels], data.y_val, num_classes=4)
    config = TINY.replace(**augmentation)
    first = train(config.replace(epochs=1), gray, checkpoint_dir=tmp_path)
    assert first.status == "complete"
    layers = {type(layer).__name__ for layer in first.model.layers}
    assert {"RandAugment": "randaugment", "AugMix": "augmix", "RandomErasing": "random_erasing"}.keys() & layers
    resumed = train(config, gray, checkpoint_dir=tmp_path)
    assert [r.epoch for r in resumed.history] == [1, 2] and resumed.status == "complete"
