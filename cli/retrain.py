"""`nasopt train`: retrain a trial's architecture from scratch (full schedule), report TEST accuracy,
optionally beside torchvision's ResNet-18 (`--compare resnet18`) or on another dataset (`--dataset`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from nasopt.errors import UserError

__all__ = ["add_parser", "cmd_train"]

BASELINES = ("resnet18",)


def _train_config(study: Any, args: argparse.Namespace) -> Any:
    from nasopt.train import TrainConfig

    recorded = dict((study.user_attrs.get("nasopt") or {}).get("train") or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
               if v is not None}
    return dataclasses.replace(config, **changes)


def _cell_space(space: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A cell space (one with `auxiliary` and `drop_path` arguments) with DARTS' evaluation setting:
    the auxiliary head on and drop path 0.2, unless --no-aux / --drop-path say otherwise."""
    from nasopt.export._rebuild import space_kwargs

    kwargs = space_kwargs(space)
    if kwargs is None or "auxiliary" not in kwargs or "drop_path" not in kwargs:
        if args.drop_path is not None:
            raise UserError(f"--drop-path applies to cell spaces (darts_cell, conv1d), not {type(space).__name__}")
        return space, {}
    extras = {"auxiliary": not args.no_aux, "drop_path": 0.2 if args.drop_path is None else args.drop_path}
    if not 0 <= extras["drop_path"] < 1:
        raise UserError(f"`0 <= --drop-path < 1` must hold, but got {extras['drop_path']}")
    return type(space)(**{**kwargs, **extras}), extras


def _row(name: str, model: Any, task: Any, result: dict[str, Any]) -> dict[str, Any]:
    from nasopt.measure._metrics import count_macs, count_params

    aux = getattr(model, "auxiliary_head", None)  # trained with, not run at inference: not counted
    params = count_params(model) - (count_params(aux) if aux is not None else 0)
    return {"model": name, "params": params, "macs": count_macs(model, task.input_shape),
            **{k: v for k, v in result.items() if k != "curve"}, "curve": result["curve"]}


def _print_table(rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    # the accuracy where the task has classes, else the loss; then the user's metrics
    shown = [k for k in rows[0] if k.startswith(("val_", "test_")) and not k.endswith(("_top5", "_loss"))] \
        if "val_acc" in rows[0] else [k for k in rows[0] if k.startswith(("val_", "test_"))]
    frame = pd.DataFrame([{"model": r["model"], "params": f"{r['params']:,}", "MACs": f"{r['macs']:,}",
                           **{k.replace("_", " ", 1): f"{r[k]:.4f}" for k in shown if k in r},
                           "train s": f"{r['train_s']:.1f}"} for r in rows])
    print(frame.to_string(index=False))


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from nasopt.cli.export import resolve_study
    from nasopt.data import load_task, resolve_device
    from nasopt.export._export import write_export
    from nasopt.export._rebuild import normalisation, space_config
    from nasopt.export._retrain import AUGMENTATIONS, augmentation_for, resnet18, retrain
    from nasopt.export._trial import check_params, completed_trial, describe_export

    if args.compare and args.compare not in BASELINES:
        raise UserError(f"unknown baseline {args.compare!r}; --compare takes {', '.join(BASELINES)}")
    if args.epochs < 1:
        raise UserError(f"`--epochs >= 1` must hold, but got {args.epochs}")
    if args.augment not in ("auto", *AUGMENTATIONS):
        raise UserError(f"unknown augmentation {args.augment!r}; choose auto, {', '.join(AUGMENTATIONS)}")
    target = Path(args.output) if args.output else None
    if target is not None and target.exists() and not args.force:  # refuse before any training
        raise UserError(f"{target} exists; pass --force to replace it, or choose another -o DIR")
    device = resolve_device(args.device)
    study, rebuilt, storage, _ = resolve_study(args, load_data=args.dataset is None, device=device)
    trial = completed_trial(study, args.trial)
    params = dict(trial.params)
    try:
        check_params(rebuilt.space.build(params, rebuilt.task), trial, rebuilt.source)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot rebuild trial {args.trial} ({type(e).__name__}: {e}); pass --study-file FILE") from None
    task, data = rebuilt.task, dict(rebuilt.data)
    if args.dataset is not None:  # transfer: the same architecture, trained on other data
        data = {"dataset": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size,
                "val_fraction": 0.2, "seed": args.seed}
        task = load_task(args.dataset, data_dir=args.data_dir, image_size=args.image_size, seed=args.seed,
                         device=device)
    config = _train_config(study, args)
    augmentation = augmentation_for(task.name, tuple(task.input_shape)) if args.augment == "auto" else args.augment
    space, cell = _cell_space(rebuilt.space, args)
    torch.manual_seed(args.seed)
    try:
        model = space.build(params, task).to(device)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"trial {args.trial}'s architecture cannot be built for {task.name} (input "
                        f"{tuple(task.input_shape)}): {type(e).__name__}: {e}") from None
    models = [(f"trial {args.trial}", model)]
    if args.compare:
        torch.manual_seed(args.seed)
        models.append((args.compare, resnet18(task).to(device)))
    extras = ", ".join(f"{k} {v}" for k, v in cell.items()) or "no aux head / drop path (not a cell space)"
    print(f"retraining trial {args.trial} of {study.study_name!r} on {task.name} for {config.epochs} epochs "
          f"(cosine, {config.optimizer} lr {config.lr}, augmentation {augmentation}, {extras})", file=sys.stderr)
    rows = []
    for name, net in models:
        def on_epoch(epoch: int, record: dict[str, float], name: str = name) -> None:
            if not args.quiet:
                key = "val_acc" if "val_acc" in record else "val_loss"
                print(f"  {name}: epoch {epoch}/{config.epochs} train loss {record['train_loss']:.4f} "
                      f"{key.replace('_', ' ')} {record[key]:.4f}", file=sys.stderr)

        result = retrain(net, task, config, augmentation=augmentation, seed=args.seed, on_epoch=on_epoch)
        rows.append(_row(name, net, task, result))
    summary = {"study": study.study_name, "trial": args.trial, "dataset": task.name, "augmentation": augmentation,
               "train": dataclasses.asdict(config), "cell": cell, "seed": args.seed, "results": rows}
    if target is not None:
        config_used = space_config(space) or rebuilt.space_config
        arch, manifest = describe_export(
            model, space, params, config_used, task, study=study.study_name, trial=args.trial,
            strategy=trial.user_attrs.get("strategy"), normalisation=normalisation(task),
            weights={"source": "nasopt train", "trained": True, "epochs": config.epochs},
            retrain={k: v for k, v in rows[0].items() if k != "curve"} | {"augmentation": augmentation, **cell},
            data=data, space_source=rebuilt.source, train=dataclasses.asdict(config))
        write_export(target, {"": (model, arch, manifest)}, force=args.force)
        summary["export"] = str(target)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_table(rows)
        if target is not None:
            print(f"exported trial {args.trial} (retrained) -> {target}")
    return 0


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="retrain a trial from scratch with the full schedule; test accuracy, "
                                     "optionally beside ResNet-18 or on another dataset",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  nasopt train nano_evolution --trial 3 --epochs 20\n"
                           "  nasopt train mobile_pareto --trial 2 --epochs 50 --compare resnet18 --json\n"
                           "  nasopt train nano_evolution --trial 3 --epochs 20 -o exports/nano-t3   # retrain and export\n"))
    t.add_argument("study", help="the study's name (see `nasopt ls`)")
    t.add_argument("--trial", type=int, required=True, metavar="N", help="the trial whose architecture to train")
    t.add_argument("--epochs", type=int, required=True, metavar="E", help="training epochs (cosine schedule)")
    t.add_argument("--compare", metavar="MODEL", help="train a baseline on the same data and schedule: resnet18")
    t.add_argument("--dataset", help="train on another dataset (transfer of the architecture)")
    t.add_argument("--data-dir", help="data folder of --dataset")
    t.add_argument("--image-size", type=int, help="resize --dataset images to this size")
    t.add_argument("--batch-size", type=int, help="override the study's batch size")
    t.add_argument("--lr", type=float, help="override the study's learning rate")
    t.add_argument("--augment", default="auto", help="auto (the dataset's standard), none, crop or crop+flip")
    t.add_argument("--drop-path", type=float, help="drop-path rate of cell networks (default 0.2)")
    t.add_argument("--no-aux", action="store_true", help="no auxiliary head for cell networks")
    t.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the data order and the split of --dataset (default 0)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train (default auto: cuda when available)")
    t.add_argument("--storage", help="storage URL (default sqlite:///nasopt.db in the working directory)")
    t.add_argument("--study-file", metavar="FILE", help="the study file that ran the study")
    t.add_argument("-o", "--output", metavar="DIR", help="also export the retrained model to DIR (as `nasopt export`)")
    t.add_argument("--force", action="store_true", help="replace an existing -o DIR")
    t.add_argument("--json", action="store_true", help="print the results as one JSON object")
    t.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    t.set_defaults(func=cmd_train)
