"""In-model augmentation: which layers a config asks for, and the policies' pixel range."""

import numpy as np
import pytest

from kilotune.subset.datasets import channel_stats, normalize
from kilotune.training.augment import image_augmentation
from kilotune.training.config import TrainConfig


def names(config: TrainConfig, normalization=None) -> list[str]:
    return [type(layer).__name__ for layer in image_augmentation(config, (32, 32, 3), normalization)]


def test_the_layers_follow_the_config_in_order():
    stats = (np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
    assert names(TrainConfig(flip=False, crop_padding=0, cutout=0)) == []
    assert names(TrainConfig(cutout=8, policy="randaugment", random_erasing=0.25), stats) == [
        "RandomFlip", "RandomTranslation", "Rescaling", "RandAugment", "Rescaling", "RandomErasing", "RandomErasing"]
    assert "AugMix" in names(TrainConfig(policy="augmix"), stats)


def test_a_policy_sees_pixels_in_zero_to_one_and_hands_back_normalised_ones():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    stats = channel_stats(x)
    to_pixels, policy, back = image_augmentation(TrainConfig(flip=False, crop_padding=0, cutout=0, policy="augmix"), (32, 32, 3), stats)
    normalised = normalize(x, *stats)
    pixels = np.asarray(to_pixels(normalised))
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and np.allclose(pixels, x / 255.0, atol=1e-5)
    assert type(policy).__name__ == "AugMix"
    assert np.allclose(np.asarray(back(pixels)), normalised, atol=1e-4)


def test_a_policy_without_the_channel_statistics_is_refused():
    with pytest.raises(ValueError, match="policy='randaugment' needs the training images' channel statistics"):
        image_augmentation(TrainConfig(policy="randaugment"), (32, 32, 3))
