"""How fast the `nasopt` command answers: wall and CPU seconds of `--help`, `run --help`, `ls`, `show`
and `list spaces` (median of --repeats runs after one warm-up, each a fresh process), and whether the process loaded torch.

    python benchmarks/bench_cli.py --storage sqlite:///nasopt.db --study NAME
    python benchmarks/bench_cli.py --source /tmp/old   # a copy laid out as installed: old/nasopt/{cli,search_spaces}

`--source` measures another version of the code (e.g. `git archive REV nasopt cli search_spaces`, with cli/ and
search_spaces/ moved into nasopt/) with the same interpreter, for a before/after figure.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

# runs `nasopt.cli` from sys.argv[1] instead of the installed (editable) package, then says if torch loaded
RUNNER = """
import atexit, runpy, sys
if sys.argv[1]:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, sys.argv[1])
del sys.argv[1]
sys.argv[0] = "nasopt"
atexit.register(lambda: sys.stderr.write(f"\\ntorch loaded: {'torch' in sys.modules}\\n"))
runpy.run_module("nasopt.cli", run_name="__main__", alter_sys=True)
"""


def timed(args: list[str], source: str) -> tuple[float, float, bool]:
    """(wall s, CPU s user+system, torch loaded) of one `nasopt ARGS` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUNNER, source, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"nasopt {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, "torch loaded: True" in out.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="", help="a source copy to measure instead of the installed package")
    p.add_argument("--storage", help="the storage `ls` and `show` read (default: only --help is timed)")
    p.add_argument("--study", help="the study `show` prints")
    p.add_argument("--repeats", type=int, default=3, help="runs per command; the median is reported (default 3)")
    args = p.parse_args()
    commands = [["--help"], ["run", "--help"]]
    if args.storage:
        commands.append(["ls", "--storage", args.storage])
    if args.storage and args.study:
        commands.append(["show", args.study, "--storage", args.storage])
    commands.append(["list", "spaces"])
    print(f"{'command':<16} {'wall s':>7} {'cpu s':>7}  torch")
    for command in commands:
        try:
            timed(command, args.source)  # a warm-up: bytecode caches written, files in the page cache
            runs = [timed(command, args.source) for _ in range(args.repeats)]
        except SystemExit:  # an older version without the command
            print(f"{' '.join(command[:2]):<16} {'-':>7} {'-':>7}  (fails in this version)")
            continue
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        name = " ".join(command[:2]) if command[1:2] == ["--help"] or command[0] == "list" else command[0]
        print(f"{name:<16} {wall:>7.2f} {cpu:>7.2f}  {'yes' if any(r[2] for r in runs) else 'no'}")


if __name__ == "__main__":
    main()
