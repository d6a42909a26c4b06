"""`nasopt latency-table`: measure a space's latency lookup table on this machine's CPU or GPU."""

from __future__ import annotations

import argparse
from typing import Any

from nasopt.errors import UserError

__all__ = ["add_parser", "cmd_latency_table"]


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise UserError(f"--input-shape {text!r}: expected C,H,W (images) or C,L (signals), e.g. 3,32,32")
    return shape


def _space_and_task(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    from nasopt.cli.studyfile import load_study_file
    from nasopt.data import load_task
    from nasopt.search_spaces import make_space

    if args.study and args.space:
        raise UserError("give --space NAME or --study FILE, not both")
    if not args.study and not args.space:
        raise UserError("which space? give --space NAME (its default settings, e.g. --space mobile) or --study FILE "
                        "(the space, dataset and storage of a study file)")
    storage, dataset, data_dir, image_size = args.storage, args.dataset, args.data_dir, None
    if args.study:
        spec = load_study_file(args.study)
        space = spec.space
        storage = storage or spec.storage
        dataset, data_dir, image_size = dataset or spec.dataset, data_dir or spec.data_dir, spec.image_size
    else:
        space = make_space(args.space)
    if args.input_shape:
        if args.dataset:
            raise UserError("give --dataset or --input-shape, not both")
        from nasopt.export import ShapeTask  # torch: loaded only when the command runs, not for --help

        return space, ShapeTask("shape", _input_shape(args.input_shape), args.num_classes), storage
    if (dataset or "digits") == "nanobench":
        raise UserError("nanobench is a table of results, not data: give --dataset digits or --input-shape C,H,W")
    return space, load_task(dataset or "digits", data_dir=data_dir, image_size=image_size), storage


def cmd_latency_table(args: argparse.Namespace) -> int:
    from nasopt.measure._latency_build import build_table
    from nasopt.measure._latency_table import default_path

    space, task, storage = _space_and_task(args)
    table = build_table(space, task, device=args.device, batch_size=args.batch, threads=args.threads,
                        warmup=args.warmup, repeats=args.repeats, progress=not args.quiet)
    path = table.save(args.output or default_path(space, args.device, storage))
    p = table.provenance
    print(f"latency table of {p['space']} on input {tuple(p['input_shape'])}: {len(table)} op entries, "
          f"{len(table.frames)} frames -> {path}")
    print(f"measured on {p['device']} ({p['device_name']}), {p['threads']} threads, batch {p['batch_size']}, "
          f"median of {p['repeats']} after {p['warmup']} warm-up rounds")
    return 0


def add_parser(sub: Any) -> None:
    t = sub.add_parser("latency-table", help="measure every candidate op at every shape of a space (a latency "
                                             "lookup table for ProxylessNAS and predicted latency)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                           "examples:\n"
                           "  nasopt latency-table --study studies/mobile_proxyless.py   # -> ./latency_mobile_cpu.json\n"
                           "  nasopt latency-table --space mobile --input-shape 3,32,32 --repeats 10 -o lat.json\n"))
    t.add_argument("--space", help="a space by name, with its default settings (e.g. mobile)")
    t.add_argument("--study", metavar="FILE", help="take the space, dataset and storage from a study file")
    t.add_argument("--dataset", help="the data whose input shape the table is for (default digits, or the study's)")
    t.add_argument("--data-dir", help="where the dataset lives (mnist, cifar10, imagefolder, ...)")
    t.add_argument("--input-shape", metavar="C,H,W", help="the input shape instead of a dataset, e.g. 3,32,32")
    t.add_argument("--num-classes", type=int, default=10, help="classes of the head with --input-shape (default 10)")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the hardware to measure on (default cpu)")
    t.add_argument("--batch", type=int, default=1, help="batch size of the measured forward passes (default 1)")
    t.add_argument("--threads", type=int, help="CPU threads while measuring (default: torch's current number)")
    t.add_argument("--warmup", type=int, default=5, help="warm-up rounds before timing (default 5)")
    t.add_argument("--repeats", type=int, default=30, help="timed rounds; each entry's median is kept (default 30)")
    t.add_argument("-o", "--output", metavar="FILE", help="where to write the JSON table (default "
                                                            "latency_<space>_<device>.json next to the database)")
    t.add_argument("--storage", help="the study's storage URL: the default table file goes next to its database")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_latency_table)
