"""Taking a trial out of the study: rebuilding its space and data, exporting it (PyTorch, TorchScript,
ONNX, manifest) and retraining it.
"""

from nasopt.export._export import (
    DROPPED_ATTR,
    FORMAT,
    check_outputs,
    check_params,
    completed_trial,
    describe_export,
    keep_front_weights,
    load_model,
    prepare_trial,
    read_arch,
    versions,
    write_export,
)
from nasopt.export._rebuild import (
    ShapeTask,
    input_record,
    normalisation,
    space_config,
    space_from_config,
    study_record,
)
from nasopt.export._retrain import AUGMENTATIONS, AugmentedSplit, augment, augmentation_for, resnet18, retrain

__all__ = ['FORMAT', 'write_export', 'load_model', 'read_arch', 'check_outputs', 'versions', 'prepare_trial', 'describe_export', 'completed_trial', 'check_params', 'keep_front_weights', 'DROPPED_ATTR', 'ShapeTask', 'space_config', 'space_from_config', 'study_record', 'normalisation', 'input_record', 'AUGMENTATIONS', 'augmentation_for', 'AugmentedSplit', 'augment', 'resnet18', 'retrain']
