"""One trial of a study, made ready to export: checked (COMPLETE, its weights readable, the rebuilt network
the size the study recorded), described (arch.json and the manifest), and the weights of trials that left
the Pareto front dropped from the store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nasopt.errors import UserError
from nasopt.export._rebuild import kind_record
from nasopt.keys import DROPPED_ATTR

__all__ = ["completed_trial", "check_params", "prepare_trial", "describe_export", "keep_front_weights",
           "int8_calibration"]


def completed_trial(study: Any, number: int) -> Any:
    """Trial `number` of `study`, which must exist and be COMPLETE."""
    from optuna.trial import TrialState

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UserError(f"study {study.study_name!r} has no trial {number} (trials 0..{max(trials, default=-1)}); "
                        "see `nasopt show`")
    t = trials[number]
    if t.state != TrialState.COMPLETE:
        why = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason")
        raise UserError(f"trial {number} of study {study.study_name!r} is {t.state.name}"
                        f"{f' ({why})' if why else ''}; only COMPLETE trials can be exported (see `nasopt show`)")
    return t


def _weights(trial: Any, store: Any) -> tuple[dict[str, torch.Tensor], str]:
    from nasopt.artifacts._inherit import load_weights
    from nasopt.keys import WEIGHTS_ATTR

    artifact = trial.user_attrs[WEIGHTS_ATTR]
    try:
        state = load_weights(artifact, store)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("not a state dict")
        return state, artifact
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise UserError(f"the weights artifact {artifact} of trial {trial.number} cannot be read ({type(e).__name__}"
                        f"{': ' + first if first else ''}); retrain it with `nasopt train` instead") from None


def _genotype(space: Any, params: Mapping[str, Any]) -> str | None:
    """The printed Genotype of cell spaces (darts_cell, conv1d); None for other spaces."""
    to_genotype = getattr(space, "to_genotype", None)
    return str(to_genotype(params)) if callable(to_genotype) else None


def check_params(model: nn.Module, trial: Any, source: str) -> None:
    """The rebuilt network must have the parameter count the study recorded for the trial."""
    from nasopt.measure._metrics import count_params

    n_params, recorded = count_params(model), trial.user_attrs.get("params")
    if recorded is not None and int(recorded) != n_params:
        raise UserError(f"trial {trial.number} rebuilt from the {source} has {n_params} parameters, but the study "
                        f"recorded {int(recorded)}: the space's settings differ from the run's; pass the study file "
                        "that ran it (--study-file FILE)")


def prepare_trial(study: Any, number: int, rebuilt: Any, *, store: Any = None, untrained: bool = False,
                  storage: str | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model, arch, manifest) of one COMPLETE trial, with its stored trained weights (or, with
    `untrained`, fresh ones). Every check happens here, before anything is written."""
    from nasopt.keys import WEIGHTS_ATTR

    trial = completed_trial(study, number)
    has_weights = bool(trial.user_attrs.get(WEIGHTS_ATTR))
    if has_weights and number in study.user_attrs.get(DROPPED_ATTR, []) and not untrained:
        raise UserError(f"the weights of trial {number} were dropped when it left the Pareto front; retrain and "
                        f"export it with `nasopt train {study.study_name} --trial {number} --epochs E -o DIR`")
    has_weights = has_weights and number not in study.user_attrs.get(DROPPED_ATTR, [])
    if not has_weights and not untrained:
        raise UserError(f"trial {number} of study {study.study_name!r} has no stored weights (trials that were "
                        f"dominated when they finished keep none, unless the study ran with inherit_weights); retrain and export it with `nasopt train {study.study_name} --trial {number} "
                        "--epochs E -o DIR`, or pass --untrained to export the architecture with fresh weights")
    space, task, params = rebuilt.space, rebuilt.task, dict(trial.params)
    torch.manual_seed(int(trial.user_attrs.get("seed", 0)))
    try:
        model = space.build(params, task).cpu().eval()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot rebuild trial {number} with {type(space).__name__} ({type(e).__name__}: {e}); "
                        "pass the study file that ran it (--study-file FILE)") from None
    check_params(model, trial, rebuilt.source)
    if has_weights and store is not None:
        state, artifact = _weights(trial, store)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"the weights artifact {artifact} of trial {number} does not fit the rebuilt network "
                            f"({str(e).splitlines()[0][:160]}); pass the study file that ran it (--study-file FILE)") from None
        weights = {"source": "trial artifact", "artifact": artifact, "trained": True}
    else:
        weights = {"source": "initialised", "trained": False,
                   "note": "freshly initialised weights (--untrained): the architecture only; train it with `nasopt train`"}
    names = study.metric_names or [f"value{i}" for i in range(len(study.directions))]
    objectives = {n: {"value": v, "direction": d.name.lower()}
                  for n, v, d in zip(names, trial.values, study.directions, strict=True)}
    arch, manifest = describe_export(model, space, params, rebuilt.space_config, task, study=study.study_name,
                                     storage=storage, trial=number, strategy=trial.user_attrs.get("strategy"),
                                     objectives=objectives, search_latency=trial.user_attrs.get("latency"),
                                     weights=weights, data=rebuilt.data, space_source=rebuilt.source,
                                     normalisation=rebuilt.normalisation,
                                     train=(study.user_attrs.get("nasopt") or {}).get("train"))
    return model, arch, manifest


def describe_export(model: nn.Module, space: Any, params: Mapping[str, Any], space_config: Any, task: Any,
                    *, search_latency: Any = None, normalisation: Any = None, **manifest: Any) -> tuple[dict, dict]:
    """arch.json's content and the manifest (params, MACs, latency and memory measured now on the CPU,
    with provenance, plus `manifest`'s entries) of `model`, an architecture of `space`."""
    from nasopt.measure._metrics import count_macs, count_params, measure_latency, peak_memory

    model = model.cpu().eval()
    shape = tuple(int(v) for v in task.input_shape)
    arch = {"space": space_config, "params": dict(params), "describe": space.describe(params),
            "genotype": _genotype(space, params), "input_shape": list(shape), "num_classes": int(task.num_classes),
            **kind_record(task)}
    latency = measure_latency(model, shape)
    memory, memory_provenance = peak_memory(model, shape)
    head = {k: manifest.pop(k) for k in ("study", "storage", "trial", "strategy", "objectives") if k in manifest}
    return arch, {
        **head, "params": count_params(model), "macs": count_macs(model, shape),
        "latency": {"search": search_latency,
                    "export": {"median_ms": latency.median_ms, "iqr_ms": latency.iqr_ms, **latency.provenance}},
        "memory_mb": {"value": round(memory / 2**20, 4), **memory_provenance},
        "input": _input(shape, normalisation),
        **manifest,
    }


def _input(shape: tuple[int, ...], normalisation: Any) -> dict[str, Any]:
    """The manifest's `input`: the tensor the network takes and how to make it from the dataset's raw data
    (`feed` in one line; `raw`: where it comes from, its units and range; `normalisation`: the steps)."""
    out: dict[str, Any] = {"shape": [1, *shape], "dtype": "float32"}
    norm = dict(normalisation) if isinstance(normalisation, Mapping) else None
    if norm is not None and isinstance(norm.get("raw"), Mapping):
        out["feed"] = norm.pop("feed", None)
        out["raw"] = norm.pop("raw")
    out["normalisation"] = norm
    return out


def keep_front_weights(study: Any, store: Any) -> list[int]:
    """Delete the stored weights of COMPLETE trials that are no longer Pareto-optimal (no longer the best,
    for one objective), so a study keeps trained weights for exactly the trials worth exporting.
    The dropped trial numbers are added to the study's `weights_dropped` attr (a finished trial's attrs
    cannot change), so `export` can say why. Returns the numbers dropped now."""
    from optuna.trial import TrialState

    from nasopt.keys import WEIGHTS_ATTR

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    keep = {t.number for t in study.best_trials} if len(study.directions) > 1 else {study.best_trial.number}
    dropped = set(study.user_attrs.get(DROPPED_ATTR, []))
    now = []
    for t in complete:
        artifact = t.user_attrs.get(WEIGHTS_ATTR)
        if artifact and t.number not in keep and t.number not in dropped:
            try:
                store.remove(artifact)
            except Exception:  # already gone: nothing to free
                pass
            now.append(t.number)
    if now:
        study.set_user_attr(DROPPED_ATTR, sorted(dropped | set(now)))
    return now


def int8_calibration(study: Any, number: int) -> Any:
    """The calibration that made trial `number`'s int8 metrics (its record), else the study's settings
    (`MeasureConfig.int8_samples`, `int8_method`), else the defaults: the export quantizes the same way."""
    from nasopt.measure._int8 import Calibration

    trial = completed_trial(study, number)
    recorded = (trial.user_attrs.get("int8") or {}).get("calibration_settings")
    if isinstance(recorded, Mapping):
        return Calibration(**{k: recorded[k] for k in ("samples", "method", "seed", "batch_size", "activations")
                              if k in recorded})
    definition = (study.user_attrs.get("nasopt") or {}).get("definition") or {}
    return Calibration(samples=int(definition.get("measure.int8_samples") or 256),
                       method=str(definition.get("measure.int8_method") or "minmax"))
