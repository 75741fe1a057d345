"""Benchmark the whole program under mocks against the floor of its imports and manifest parse.

Measures, over N repetitions (``--runs``, default 5), each in a fresh subprocess so that
imports are cold (the OS page cache is warm after the warm-up run):

* program: ``tests.mockrun.run(job)`` on the dev stack's job, built exactly as the tests
  build it (``tests.conftest.base_config("dev")``, the test Docker Hub token and the
  shared v3.5.1 ``install.yaml`` mirror). Includes importing the SDKs, reading and
  verifying the manifest, registering every resource with Pulumi's mock monitor and
  resolving the stack outputs.
* floor: importing pulumi, pulumi_kubernetes, pulumi_gitlab, pulumi_tls and pulumi_random
  and parsing the same ``install.yaml`` with ``yaml.load_all(..., Loader=yaml.CSafeLoader)``.
  No program can do less than this.

For each run it records the wall time seen by the parent (interpreter start to exit), the
time measured inside the child (first statement of the snippet to the end of the work) and
the child's own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux).
It prints the medians and the program/floor ratios against a target of at most 1.5x.

With ``--apps 1,10,50`` it measures the program alone on stacks of that many apps instead
(the example `teams` stack's settings, apps generated two to a manifest project) and reports,
per size, the median wall and in-child time, peak RSS and resources registered, and the
cost of each app added between sizes: flat figures mean no step grows with the square of
the number of apps.

Run from the repository root::

    venv/bin/python bench/bench_program.py --runs 5 [--json]
    venv/bin/python bench/bench_program.py --runs 3 --apps 1,10,50
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.5

# Child snippets: each prints one JSON line with its own elapsed time and peak RSS.
PROGRAM_SNIPPET = """
import time
_t0 = time.perf_counter()
import json, resource, sys
job = json.loads(sys.stdin.read())
from tests.mockrun import run
report = run(job)
elapsed = time.perf_counter() - _t0
print(json.dumps({
    "seconds": elapsed,
    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "error": report["error"],
    "resources": report.get("registered", len(report["resources"])),
    "reads": len(report["reads"]),
    "outputs": len(report["outputs"]),
}))
"""

FLOOR_SNIPPET = """
import time
_t0 = time.perf_counter()
import json, resource, sys
import pulumi, pulumi_kubernetes, pulumi_gitlab, pulumi_tls, pulumi_random
import yaml
with open(sys.argv[1], "rb") as f:
    docs = [d for d in yaml.load_all(f.read(), Loader=yaml.CSafeLoader) if d]
elapsed = time.perf_counter() - _t0
print(json.dumps({
    "seconds": elapsed,
    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "error": None,
    "documents": len(docs),
}))
"""


@dataclass
class Sample:
    """One child run."""

    wall_seconds: float
    child_seconds: float
    maxrss_kib: int
    detail: dict[str, Any]


@dataclass
class Summary:
    """Medians over the measured runs of one case."""

    runs: int
    median_wall_seconds: float
    median_child_seconds: float
    median_maxrss_mib: float
    min_wall_seconds: float
    max_wall_seconds: float
    samples: list[Sample]


def dev_job() -> dict[str, Any]:
    """The dev stack's job, as ``tests.conftest.run_program`` builds it with no overrides."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import TEST_KUBECONFIG, base_config

    # The kubeconfig whose contexts the stack's kubeContext is checked against, as in the tests.
    os.environ["KUBECONFIG"] = str(TEST_KUBECONFIG)

    return {
        "config": base_config("dev"),
        "secret_keys": ["dockerhubToken"],
        "stack": "dev",
        "preview": False,
        # The tests' per-request recording is harness work, not the program's.
        "record": False,
    }


def apps_job(count: int) -> dict[str, Any]:
    """The example `teams` stack's job with ``count`` generated apps, two to each manifest project."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import TEST_KUBECONFIG, base_config

    os.environ["KUBECONFIG"] = str(TEST_KUBECONFIG)
    config = base_config("teams")
    config["apps"] = json.dumps(
        [{"name": f"app{i:03d}", "manifestProject": f"charts{i // 2:03d}", "chartPath": f"app{i:03d}"} for i in range(count)]
    )
    return {"config": config, "secret_keys": ["dockerhubToken"], "stack": "teams", "preview": False, "record": False}


def measure_apps(counts: list[int], runs: int, warmup: int) -> dict[str, Any]:
    """The program on stacks of each size in ``counts``, interleaved, ``runs`` times each."""
    jobs = {n: json.dumps(apps_job(n)) for n in counts}
    samples: dict[int, list[Sample]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env["GITOPS_BOOTSTRAP_CACHE"] = str(Path(tmp) / "cache")
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        for i in range(warmup + runs):
            for n in counts:
                sample = run_child(["-c", PROGRAM_SNIPPET], jobs[n], env)
                if i >= warmup:
                    samples[n].append(sample)
    sizes = {n: asdict(summarise(s)) | {"resources": s[0].detail["resources"]} for n, s in samples.items()}
    steps = []
    for low, high in itertools.pairwise(counts):
        a, b, added = sizes[low], sizes[high], high - low
        steps.append(
            {
                "from": low,
                "to": high,
                "ms_per_app_wall": 1000 * (b["median_wall_seconds"] - a["median_wall_seconds"]) / added,
                "ms_per_app_child": 1000 * (b["median_child_seconds"] - a["median_child_seconds"]) / added,
                "mib_per_app": (b["median_maxrss_mib"] - a["median_maxrss_mib"]) / added,
                "resources_per_app": (b["resources"] - a["resources"]) / added,
            }
        )
    return {"machine": machine(), "runs": runs, "warmup": warmup, "sizes": sizes, "steps": steps}


def apps_table(result: dict[str, Any]) -> str:
    """A plain-text table of the per-size medians and the cost of each added app."""
    m = result["machine"]
    lines = [
        f"{m['implementation']} {m['python']}, nproc={m['nproc']}, runs={result['runs']} (+{result['warmup']} warm-up)",
        "",
        f"{'apps':>5} {'wall s (median)':>16} {'in-child s':>11} {'peak RSS MiB':>13} {'resources':>10}",
    ]
    for n, s in result["sizes"].items():
        lines.append(
            f"{n:>5} {s['median_wall_seconds']:>16.3f} {s['median_child_seconds']:>11.3f}"
            f" {s['median_maxrss_mib']:>13.1f} {s['resources']:>10}"
        )
    lines += ["", f"{'added apps':>12} {'ms/app wall':>12} {'ms/app child':>13} {'MiB/app':>8} {'resources/app':>14}"]
    for step in result["steps"]:
        lines.append(
            f"{str(step['from']) + '->' + str(step['to']):>12} {step['ms_per_app_wall']:>12.1f}"
            f" {step['ms_per_app_child']:>13.1f} {step['mib_per_app']:>8.2f} {step['resources_per_app']:>14.1f}"
        )
    return "\n".join(lines)


def run_child(args: list[str], stdin: str, env: dict[str, str]) -> Sample:
    """Run one child interpreter; return its parent-side wall time and self-reported figures."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        text=True,
        capture_output=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("error"):
        raise SystemExit(f"program reported an error:\n{json.dumps(result['error'], indent=2)[-4000:]}")
    detail = {k: v for k, v in result.items() if k not in {"seconds", "maxrss_kib", "error"}}
    return Sample(wall, float(result["seconds"]), int(result["maxrss_kib"]), detail)


def summarise(samples: list[Sample]) -> Summary:
    """Medians (and the wall-time spread) of a case's samples."""
    walls = [s.wall_seconds for s in samples]
    return Summary(
        runs=len(samples),
        median_wall_seconds=statistics.median(walls),
        median_child_seconds=statistics.median(s.child_seconds for s in samples),
        median_maxrss_mib=statistics.median(s.maxrss_kib for s in samples) / 1024,
        min_wall_seconds=min(walls),
        max_wall_seconds=max(walls),
        samples=samples,
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }


def measure(runs: int, warmup: int) -> dict[str, Any]:
    """Run both cases ``runs`` times (interleaved, after ``warmup`` unmeasured rounds)."""
    job = dev_job()
    manifest = job["config"].get("argocdManifest")
    if not manifest or not Path(manifest).is_file():
        raise SystemExit("the shared install.yaml mirror is missing; expected ../shared/upstream/argo-cd/<version>/")
    job_text = json.dumps(job)
    program: list[Sample] = []
    floor: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env["GITOPS_BOOTSTRAP_CACHE"] = str(Path(tmp) / "cache")
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        for i in range(warmup + runs):
            p = run_child(["-c", PROGRAM_SNIPPET], job_text, env)
            f = run_child(["-c", FLOOR_SNIPPET, manifest], "", env)
            if i >= warmup:
                program.append(p)
                floor.append(f)
    prog, flo = summarise(program), summarise(floor)
    time_ratio = prog.median_wall_seconds / flo.median_wall_seconds
    rss_ratio = prog.median_maxrss_mib / flo.median_maxrss_mib
    return {
        "machine": machine(),
        "manifest": manifest,
        "runs": runs,
        "warmup": warmup,
        "target_ratio": TARGET_RATIO,
        "program": asdict(prog),
        "floor": asdict(flo),
        "ratio": {
            "wall_time": time_ratio,
            "child_time": prog.median_child_seconds / flo.median_child_seconds,
            "peak_rss": rss_ratio,
        },
        "target_met": {
            "time": time_ratio <= TARGET_RATIO,
            "memory": rss_ratio <= TARGET_RATIO,
        },
    }


def table(result: dict[str, Any]) -> str:
    """A plain-text table of the medians and ratios."""
    prog, flo, ratio, met = (
        result["program"],
        result["floor"],
        result["ratio"],
        result["target_met"],
    )
    m = result["machine"]
    lines = [
        f"{m['implementation']} {m['python']}, nproc={m['nproc']}, runs={result['runs']} (+{result['warmup']} warm-up)",
        "",
        f"{'case':<10} {'wall s (median)':>16} {'in-child s':>11} {'peak RSS MiB':>13} {'wall min..max':>16}",
    ]
    for name, s in (("program", prog), ("floor", flo)):
        spread = f"{s['min_wall_seconds']:.3f}..{s['max_wall_seconds']:.3f}"
        lines.append(
            f"{name:<10} {s['median_wall_seconds']:>16.3f} {s['median_child_seconds']:>11.3f}"
            f" {s['median_maxrss_mib']:>13.1f} {spread:>16}"
        )
    lines.append(f"{'ratio':<10} {ratio['wall_time']:>15.2f}x {ratio['child_time']:>10.2f}x {ratio['peak_rss']:>12.2f}x")
    lines.append("")
    target = result["target_ratio"]
    lines.append(
        f"target <= {target}x: time {'MET' if met['time'] else 'NOT MET'}, memory {'MET' if met['memory'] else 'NOT MET'}"
    )
    detail = prog["samples"][0]["detail"]
    lines.append(
        f"program registered {detail.get('resources')} resources, {detail.get('reads')} reads, "
        f"{detail.get('outputs')} outputs; floor parsed {flo['samples'][0]['detail'].get('documents')} documents"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="measured repetitions of each case (default 5)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unmeasured rounds first, to warm the page cache (default 1)",
    )
    parser.add_argument(
        "--apps",
        default="",
        help="comma-separated app counts (e.g. 1,10,50): measure the program per stack size instead",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the full result as JSON instead of a table",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    if args.apps:
        counts = sorted({int(n) for n in args.apps.split(",")})
        if counts[0] < 1:
            parser.error("--apps counts must be >= 1")
        per_size = measure_apps(counts, args.runs, args.warmup)
        print(json.dumps(per_size, indent=2) if args.json else apps_table(per_size))
        return 0
    result = measure(args.runs, args.warmup)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
