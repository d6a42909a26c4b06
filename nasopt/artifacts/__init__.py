"""What a trial leaves beside its numbers: weights kept for inheritance and export, architecture
pictures, and the architecture graph they are drawn from.
"""

from nasopt.artifacts._graph import arch_graph, trace_shapes
from nasopt.artifacts._inherit import (
    DECISIONS_ATTR,
    WEIGHTS_ATTR,
    Recorder,
    artifact_dir,
    artifact_store_for,
    inherit,
    load_weights,
    matching_prefix,
    save_weights,
)
from nasopt.artifacts._pictures import (
    PICTURE_ATTR,
    PICTURE_SUFFIX,
    draw_missing,
    keep_weights,
    picture_ids,
    picture_svg,
    save_picture,
    to_svg,
)

__all__ = ['artifact_dir', 'arch_graph', 'trace_shapes', 'Recorder', 'matching_prefix', 'inherit', 'save_weights', 'load_weights', 'artifact_store_for', 'WEIGHTS_ATTR', 'DECISIONS_ATTR', 'to_svg', 'picture_svg', 'save_picture', 'keep_weights', 'draw_missing', 'picture_ids', 'PICTURE_ATTR', 'PICTURE_SUFFIX']
