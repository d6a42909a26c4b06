"""Taking a trial out of the study: rebuilding its space and data (`_rebuild`), checking and describing it
(`_trial`), writing and loading the export (PyTorch, TorchScript, ONNX, int8 ONNX, manifest; `_export`) and
retraining it (`_retrain`).
"""

from nasopt.export._export import FORMAT, check_outputs, load_model, read_arch, versions, write_export
from nasopt.export._rebuild import (
    ShapeTask,
    input_record,
    kind_record,
    normalisation,
    space_config,
    space_from_config,
    study_record,
    task_kind,
)
from nasopt.export._retrain import AUGMENTATIONS, AugmentedSplit, augment, augmentation_for, resnet18, retrain
from nasopt.export._trial import (
    check_params,
    completed_trial,
    describe_export,
    int8_calibration,
    keep_front_weights,
    prepare_trial,
)

__all__ = ['FORMAT', 'write_export', 'load_model', 'read_arch', 'check_outputs', 'versions', 'prepare_trial', 'describe_export', 'completed_trial', 'check_params', 'keep_front_weights', 'int8_calibration', 'ShapeTask', 'task_kind', 'kind_record', 'space_config', 'space_from_config', 'study_record', 'normalisation', 'input_record', 'AUGMENTATIONS', 'augmentation_for', 'AugmentedSplit', 'augment', 'resnet18', 'retrain']
