"""Tasks: a dataset cut into train / val / test splits that yield normalised batches on a device.

`load_task(name, ...)` returns a `Task`. Validation always comes out of the training set (stratified,
seeded by `seed`); the test split is the dataset's official one (for `digits`, `synthetic` and an
imagefolder without test/: a fixed stratified 20% drawn with seed 0, so every study shares it). The
test split is for final models only, never for selection.

Data that fits stays in memory as tensors on the task's device (`TensorSplit`): images as uint8, so
CIFAR-10 is 150 MB, normalised per batch in one fused op; batching is index arithmetic, with no
DataLoader and no per-sample Python. An imagefolder too big for `max_in_memory_bytes` streams through a
DataLoader instead (`StreamSplit`). Samples are images (C, H, W) or sequences (C, L) (`mnist1d`, or a
user's own 1-D tensors). The readers of the individual datasets live in `_datasets` (and `_imagefolder`), the splits in
`_splits`, `load_task` in `_tasks`.

Your own tensors: save `x_train, y_train, x_test, y_test` to one file and load it as dataset `tensors`,

    np.savez("my.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)   # or torch.save({...}, "my.pt")
    task = load_task("tensors", data_dir="my.npz")   # StudySpec(dataset="tensors", data_dir="my.npz")

with x as (N, L) or (N, C, L) sequences or (N, C, H, W) images (uint8 pixels or floats) and y integer
labels 0..K-1; an optional `classes` entry names the classes.

Your own torch datasets: `user_task(data, ...)` (`_user`) takes a `"module:function"` string, a function, or
what one returns: `(train, val[, test])`, a dict with keys `train`, `val` (and `test`), or one training set
(`val_fraction` of it becomes val); each a map-style Dataset or a DataLoader over one, yielding `(x, y)`.
The kind (classify, dense or regress), input shape and number of classes come from the first training
sample unless given. Data within `max_in_memory_bytes` is read once into tensors (`MemorySplit`), bigger
data streams through a DataLoader (`LoaderSplit`, in `_user_splits`); no normalisation. Without a test set,
test is val.
"""

from nasopt.data._splits import KINDS, Split, StreamSplit, Task, TensorSplit
from nasopt.data._tasks import DATASET_NOTES, DATASETS, load_task, resolve_device
from nasopt.data._user import user_task
from nasopt.data._user_splits import LoaderSplit, MemorySplit

__all__ = ["DATASETS", "DATASET_NOTES", "KINDS", "Split", "TensorSplit", "StreamSplit", "MemorySplit", "LoaderSplit", "Task",
           "load_task", "resolve_device", "user_task"]
