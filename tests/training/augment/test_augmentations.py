"""Every augmentation in training/augment/ is found, declares TrainConfig fields that exist, and builds its layers in order."""

from dataclasses import fields

import pytest

from kilotune.search.space import DEFAULT_SPACE
from kilotune.training.augment import AUGMENTATIONS, image_augmentation, searched_params
from kilotune.training.batches import BatchMixer
from kilotune.training.config import TrainConfig

CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}


def test_each_file_of_the_folder_is_an_augmentation_found_in_order():
    assert [a.name for a in AUGMENTATIONS] == ["flip", "crop", "policy", "cutout", "random erasing", "mixing"]
    orders = [a.order for a in AUGMENTATIONS]
    assert orders == sorted(set(orders)), "one place each: the order layers run and parameters are sampled in"


@pytest.mark.parametrize("augmentation", AUGMENTATIONS, ids=lambda a: a.name)
def test_an_augmentation_reads_and_searches_only_its_own_config_fields(augmentation):
    assert set(augmentation.fields) <= CONFIG_FIELDS, "its fields are declared in training/config.py"
    for param in augmentation.params:
        assert set(param.fields) <= set(augmentation.fields)
        assert DEFAULT_SPACE[param.name] is param, "search/space.py collects it as it is"


def test_the_space_holds_the_augmentations_parameters_between_the_batch_size_and_label_smoothing():
    names = list(DEFAULT_SPACE)
    assert names[names.index("batch_size") + 1 : names.index("label_smoothing")] == [p.name for p in searched_params()]


def test_layers_per_image_in_the_model_and_per_batch_in_the_pipeline():
    config = TrainConfig(flip=True, crop_padding=4, cutout=8, mixup_alpha=0.2, cutmix_alpha=1.0)
    assert [type(layer).__name__ for layer in image_augmentation(config, (32, 32, 3))] == ["RandomFlip", "RandomTranslation", "RandomErasing"]
    assert [type(layer).__name__ for layer in BatchMixer(config).layers] == ["MixUp", "CutMix"]
    off = TrainConfig(flip=False, crop_padding=0, cutout=0)
    assert image_augmentation(off, (32, 32, 3)) == [] and not BatchMixer(off)
