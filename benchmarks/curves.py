"""Learning as fairseq learns: our runs of configs/curves_{objective}.py beside fairseq's recorded runs of the
same settings (tests/fixtures/peer/curves/{objective}.json, from scripts/make_peer_fixtures.py --curves),
and seconds per update of both.

    python benchmarks/curves.py hubert wav2vec2 [--seeds 0,1,2] [--workdir work/curves]
    python benchmarks/curves.py hubert --fairseq-python /tmp/peer/bin/python   # time fairseq in this run too

Prints, per objective: every logged update's mean over the seeds (fairseq's and ours) of the compared figures,
the band table at updates 100..600 (hubert_jax/training/curves.py: fairseq's seeds widened by half their
range or the metric's floor), and seconds per update, steady state (median over the logged windows after
the first) and wall clock (start to end, compilation and start-up included), for fairseq (torch on this
machine's cores) and hubert-jax (XLA), with their ratio. Without --fairseq-python, fairseq's figures are
the recorded ones (their machine and load are not this run's: the ratio is then indicative only).
Runs resume from --workdir, so a second call only prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hubert_jax.training.curves import compare, read_metrics, read_reference, table  # noqa: E402

FIGURES = {"hubert": ["accuracy_m", "accuracy_u", "loss"],
           "wav2vec2": ["accuracy", "contrastive", "code_perplexity", "prob_perplexity"]}
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "peer", "curves", "{}.json")


def load_config(objective: str):
    path = os.path.join(ROOT, "configs", f"curves_{objective}.py")
    spec = importlib.util.spec_from_file_location(f"curves_{objective}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_ours(objective: str, seed: int, workdir: str, steps: int | None = None) -> float:
    """One run of the objective's config (resumed when already there; the first `steps` updates of its
    schedule when given); its wall-clock seconds."""
    from hubert_jax.training.run import run

    cfg = load_config(objective)
    cfg.seed = seed
    if steps:
        cfg.train.steps = steps
    cfg.train.checkpoint_every = cfg.train.steps  # one save, at the end: the timing is the training's
    start = time.perf_counter()
    run(cfg, workdir)
    return time.perf_counter() - start


def run_fairseq(objective: str, python: str, work: str) -> dict:
    """fairseq's run of the same settings, seed 1, through make_peer_fixtures.py --curves (its JSON)."""
    out = os.path.join(work, "out")
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    subprocess.run([python, os.path.join(ROOT, "scripts", "make_peer_fixtures.py"), "--curves", objective,
                    "--seeds", "1", "--work", os.path.join(work, "runs"), "--out", out], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return read_reference(os.path.join(out, "curves", f"{objective}.json"))


def steady_seconds_per_update(rows: list[dict], key: str, per: float = 1.0) -> float:
    """Median seconds per update over the logged windows after the first (which holds the compilation)."""
    rates = [row[key] for row in rows[1:] if row.get(key)]
    return per / float(np.median(rates)) if rates else float("nan")


def side_by_side(reference: dict, ours: list[dict], figures: list[str]) -> str:
    rows = ["| split | update | " + " | ".join(f"{f} fairseq | {f} ours" for f in figures) + " |",
            "|---|---|" + "---|---|" * len(figures)]
    for split in ("train", "valid"):
        updates = sorted({r["update"] for run in reference["seeds"].values() for r in run[split]})
        for update in updates:
            cells = []
            for figure in figures:
                theirs = [r[figure] for run in reference["seeds"].values() for r in run[split]
                          if r["update"] == update and figure in r]
                mine = [m[split][update][figure] for m in ours if update in m[split] and figure in m[split][update]]
                cells += [f"{np.mean(theirs):.3f}" if theirs else "", f"{np.mean(mine):.3f}" if mine else ""]
            rows.append(f"| {split} | {update} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("objectives", nargs="+", choices=sorted(FIGURES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "work", "curves"))
    parser.add_argument("--fairseq-python", help="a python with fairseq-fixed (the peer venv): time fairseq here")
    parser.add_argument("--steps", type=int, help="stop our runs after this many updates (a smoke run: only the "
                                                  "points up to there are compared)")
    args = parser.parse_args(argv)
    outside = 0
    for objective in args.objectives:
        reference = read_reference(REFERENCE.format(objective))
        seeds = [int(s) for s in args.seeds.split(",")]
        walls = [run_ours(objective, seed, os.path.join(args.workdir, objective, f"seed{seed}"), args.steps)
                 for seed in seeds]
        ours = [read_metrics(os.path.join(args.workdir, objective, f"seed{seed}")) for seed in seeds]
        figures = FIGURES[objective]
        print(f"\n## {objective}: fairseq (seeds {', '.join(reference['seeds'])}) and hubert-jax (seeds {args.seeds}), "
              f"means over the seeds\n")
        print(side_by_side(reference, ours, figures))
        last = min(args.steps or reference["updates"], reference["updates"])
        every = 100 if last >= 100 else 25  # fairseq logged its train windows every 25 updates, valid every 100
        updates = list(range(every, last + 1, every))
        print(f"\n### each hubert-jax seed against fairseq's band\n")
        for seed, metrics in zip(seeds, ours):
            points = compare(reference, metrics, {"train": updates, "valid": [u for u in updates if u % 100 == 0]},
                             {"train": figures[:2], "valid": figures[:2]})
            outside += sum(not p.inside for p in points)
            print(f"seed {seed}: {sum(p.inside for p in points)} of {len(points)} points inside\n")
            print(table(points) + "\n")

        crop_seconds = 8 * 2.0  # audio seconds of one update (8 crops of 2 s)
        ours_steady = np.mean([steady_seconds_per_update(sorted(m["train"].values(), key=lambda r: r["step"]),
                                                         "audio_s_per_s", crop_seconds) for m in ours])
        ours_wall = np.mean(walls) / last
        if args.fairseq_python:
            with tempfile.TemporaryDirectory() as work:
                start = time.perf_counter()
                timed = run_fairseq(objective, args.fairseq_python, work)
                fs_wall = (time.perf_counter() - start) / reference["updates"]
            fs_runs, source = list(timed["seeds"].values()), "measured in this run"
        else:
            fs_runs, source = list(reference["seeds"].values()), "recorded with the fixture"
            fs_wall = np.mean([run["seconds"] for run in fs_runs]) / reference["updates"]
        fs_steady = np.mean([steady_seconds_per_update(run["train"], "updates_per_s") for run in fs_runs])
        print(f"### seconds per update ({objective}; fairseq {source}, torch threads "
              f"{fs_runs[0].get('torch_threads')})\n")
        print("| | fairseq | hubert-jax | hubert-jax / fairseq |\n|---|---|---|---|")
        print(f"| steady state | {fs_steady:.3f} | {ours_steady:.3f} | {ours_steady / fs_steady:.2f} |")
        print(f"| wall clock, start-up and compilation included | {fs_wall:.3f} | {ours_wall:.3f} | "
              f"{ours_wall / fs_wall:.2f} |")
        print(json.dumps({"objective": objective, "steady_ratio": ours_steady / fs_steady,
                          "wall_ratio": ours_wall / fs_wall}))
    print(f"\npoints outside fairseq's band: {outside}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
