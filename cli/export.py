"""`nasopt export`: a trial (or the Pareto set) as arch.json, model.pt, TorchScript, ONNX and a manifest; with
`--int8`, the int8 ONNX graph beside it, checked against the fp32 one on the validation split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nasopt.errors import UserError

__all__ = ["add_parser", "cmd_export", "resolve_study"]


def default_space(class_name: str) -> Any:
    """A space of the CLI's table by its class name, at its default settings."""
    from nasopt.search_spaces import SPACES, make_space

    names = {path.split(":")[1]: name for name, path in SPACES.items()}
    if class_name not in names:
        raise UserError(f"study's space {class_name} is not one of nasopt's spaces; pass its study file (--study-file FILE)")
    return make_space(names[class_name])


def resolve_study(args: argparse.Namespace, *, load_data: bool = False, device: str = "cpu") -> tuple[Any, Any, str, Any]:
    """(study, Rebuilt, storage URL, study spec or None) from STUDY, --storage and --study-file."""
    from nasopt.analysis._results import load_study
    from nasopt.cli.studyfile import load_study_file
    from nasopt.export._rebuild import from_study
    from nasopt.storage import DEFAULT_STORAGE

    spec = load_study_file(args.study_file) if args.study_file else None
    storage = args.storage or (spec.storage if spec is not None else None) or DEFAULT_STORAGE
    study = load_study(args.study, storage)
    rebuilt = from_study(study, spec=spec, default_space=default_space, load_data=load_data, device=device)
    return study, rebuilt, storage, spec


def artifact_store(study: Any, storage: str, spec: Any, directory: str | None) -> Any:
    from nasopt.artifacts._inherit import artifact_store_for

    recorded = (study.user_attrs.get("nasopt") or {}).get("artifacts")
    return artifact_store_for(storage, directory or (spec.artifacts if spec is not None else None) or recorded)


def _numbers(study: Any, args: argparse.Namespace) -> list[int]:
    from nasopt.analysis._results import pareto_front

    if args.trial is not None and args.pareto:
        raise UserError("give --trial N or --pareto, not both")
    if args.trial is not None:
        return [args.trial]
    front = pareto_front(study=study)
    numbers = sorted(int(n) for n in front["number"]) if not front.empty else []
    if not numbers:
        raise UserError(f"study {study.study_name!r} has no COMPLETE trial to export; see `nasopt show {study.study_name}`")
    if args.pareto or len(study.directions) == 1:
        return numbers
    raise UserError(f"study {study.study_name!r} has several objectives: give --trial N (its Pareto set: "
                    f"{', '.join(map(str, numbers))}) or --pareto")


def cmd_export(args: argparse.Namespace) -> int:
    from nasopt.export._export import write_export
    from nasopt.export._trial import int8_calibration, prepare_trial
    from nasopt.keys import WEIGHTS_ATTR
    from nasopt.measure._int8 import Int8Failed, need_int8
    from nasopt.storage import mask_url

    if args.int8:
        need_int8()  # before any work: onnxruntime's quantizer, or one line naming the extra
    study, rebuilt, storage, spec = resolve_study(args, load_data=args.int8)  # int8: calibration and check data
    numbers = _numbers(study, args)
    several = args.pareto
    target = Path(args.output or f"exports/{study.study_name}-{'pareto' if several else f'trial{numbers[0]}'}")
    if target.exists() and not args.force:  # refuse before any work
        raise UserError(f"{target} exists; pass --force to replace it, or choose another -o DIR")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    store = None
    if any(trials.get(n) is not None and trials[n].user_attrs.get(WEIGHTS_ATTR) for n in numbers):
        store = artifact_store(study, storage, spec, args.artifacts)
    items = {}
    for n in numbers:
        items[f"trial{n}" if several else ""] = prepare_trial(study, n, rebuilt, store=store, untrained=args.untrained,
                                                              storage=mask_url(storage))
    index = {"study": study.study_name, "trials": numbers} if several else None
    int8 = {sub: (rebuilt.task, int8_calibration(study, n)) for sub, n in zip(items, numbers, strict=True)} \
        if args.int8 else None
    try:
        write_export(target, items, force=args.force, index=index, int8=int8)
    except Int8Failed as e:  # nothing was written
        raise UserError(f"{e}; export the trial without --int8") from None
    for n, (_model, arch, manifest) in zip(numbers, items.values(), strict=True):
        where = target / f"trial{n}" if several else target
        trained = "trained weights" if manifest["weights"]["trained"] else "UNTRAINED weights"
        print(f"trial {n} ({arch['describe']}, {manifest['params']:,} params, {trained}) -> {where}")
        if args.int8:
            print(_int8_line(where))
    return 0


def _int8_line(where: Path) -> str:
    """What the int8 check found, in one line: from the manifest just written."""
    import json

    section = json.loads((where / "manifest.json").read_text())["int8"]
    check, size = section["check"], section["size"]
    val8, val32 = check["int8_val"], check["fp32_val"]
    if "agreement" in check:
        found = f"same class as fp32 on {check['agreement']:.2%} of {check['samples']} validation samples"
    else:
        found = f"max |int8 - fp32| output {check['max_abs_diff']:.4g} on {check['samples']} validation samples"
    score = f", accuracy {val8['acc']:.4f} (fp32 {val32['acc']:.4f})" if "acc" in val8 else \
        f", loss {val8['loss']:.4g} (fp32 {val32['loss']:.4g})"
    warning = f"\n  warning: {check['int8_warning']}" if check.get("int8_warning") else ""
    return (f"  int8: {section['file']} ({size['tensors_kb']:.1f} KB of tensors, {section['method']} calibration on "
            f"{section['calibration']['samples']} training samples): {found}{score}{warning}")


def add_parser(sub: Any) -> None:
    e = sub.add_parser("export", help="export trials as arch.json + model.pt + TorchScript + ONNX (+ int8 ONNX) + "
                                      "manifest.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  nasopt export nano_evolution                 # the best trial -> exports/nano_evolution-trial<N>\n"
                           "  nasopt export mobile_pareto --pareto -o exports/mobile\n"
                           "  nasopt export mobile_pareto --trial 2 --int8 -o exports/mobile-t2\n"))
    e.add_argument("study", help="the study's name (see `nasopt ls`)")
    e.add_argument("--storage", help="storage URL (default sqlite:///nasopt.db in the working directory)")
    e.add_argument("--trial", type=int, metavar="N", help="the trial to export (default: the best, single objective)")
    e.add_argument("--pareto", action="store_true", help="export every Pareto-optimal trial into DIR/trial<N>/")
    e.add_argument("-o", "--output", metavar="DIR", help="export directory (default exports/<study>-trial<N>)")
    e.add_argument("--force", action="store_true", help="replace an existing export directory")
    e.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx (onnxruntime static quantization, calibrated on training samples "
                        "as the study's int8 metrics were) and check it against model.onnx on the validation split")
    e.add_argument("--untrained", action="store_true",
                   help="export trials without stored weights with freshly initialised ones (architecture only)")
    e.add_argument("--study-file", metavar="FILE", help="the study file that ran the study (for spaces whose "
                                                       "settings the study does not record)")
    e.add_argument("--artifacts", metavar="DIR", help="the study's artifact folder (default beside the database)")
    e.set_defaults(func=cmd_export)
