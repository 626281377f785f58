"""Known good starting points (seeds 000-003), enqueued with ``--preset NAME`` and as a new study's warm start."""

from __future__ import annotations

from collections.abc import Iterable

from kilotune.models.names import listing
from kilotune.training.config import TrainConfig

PRESETS: dict[str, TrainConfig] = {
    # Seed 000's hand-tuned VGG-8 (48.1% on 1000 CIFAR-10 images): SGD, flip and shift
    # augmentation, dropout and L2, and no batch norm (its "future plans" list adding it).
    "vgg8-reference": TrainConfig(
        arch="vgg8", batch_norm=False, dropout=0.5, weight_decay=5e-4, optimizer="sgd", learning_rate=0.01,
        momentum=0.9, schedule="constant", batch_size=32, flip=True, crop_padding=4, cutout=0, label_smoothing=0.0,
    ),
    # Seed 003's DavidNet: ResNet-9, SGD + Nesterov, slanted one-cycle with 5 of 24 epochs of
    # warm-up, weight decay 5e-4, flip + pad-crop + 8x8 cutout, label smoothing 0.2.
    "resnet9-davidnet": TrainConfig(
        arch="resnet9", weight_decay=5e-4, optimizer="sgd", learning_rate=0.4, momentum=0.9, schedule="onecycle",
        batch_size=128, flip=True, crop_padding=4, cutout=8, label_smoothing=0.2,
    ),
    # Seed 002's WideResNet with CutMix and cosine warm restarts.
    "wrn-cutmix": TrainConfig(
        arch="wrn", depth=16, widen_factor=4, dropout=0.3, weight_decay=5e-4, optimizer="sgd", learning_rate=0.1,
        momentum=0.9, schedule="cosine_restarts", batch_size=64, cutout=0, cutmix_alpha=1.0, label_smoothing=0.0,
    ),
    # The long-training small-data recipe (Gauthier et al. 2022: WRN-16-8 with AutoAugment, 71.4%
    # on 1000 CIFAR-10 images at 1000 epochs): a WideResNet with a RandAugment policy, one-cycle.
    # Policies pay with long training only (issue 27): at a search's short trials it is a floor.
    "wrn-randaugment": TrainConfig(
        arch="wrn", depth=16, widen_factor=8, dropout=0.0, weight_decay=5e-4, optimizer="sgd", learning_rate=0.1,
        momentum=0.9, schedule="onecycle", batch_size=64, cutout=0, policy="randaugment", randaugment_ops=2,
        randaugment_magnitude=0.5, label_smoothing=0.1,
    ),
}


def check_presets(names: Iterable[str]) -> list[str]:
    """``names`` as a list, each a preset's; else a ValueError naming the unknown ones and the presets."""
    names = list(names)
    if unknown := [n for n in names if n not in PRESETS]:
        raise ValueError(f"unknown preset{'s' if len(unknown) > 1 else ''} {listing(map(repr, unknown), 'and')}; "
                         f"choose one of {listing(sorted(PRESETS))}")
    return names
