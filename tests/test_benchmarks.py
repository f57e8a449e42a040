"""The benchmark scripts run end to end and print their table (speed is not asserted: timed tests are flaky).

Smoke-sized: random weights on half a second of audio, one timed round, on one CPU device; hubert-base for
inference, the benchmarks' "tiny" model (hubert-base shrunk) where base only costs time (training, gpu_check).
"""

import os
import re
import subprocess
import sys

import pytest

from tests.environment import KEEP_FREED_MEMORY, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script, *args, steps: bool = False):
    """The script on one device, as a user runs it. Compiled fast (tests/environment.py): a smoke run compiles
    far more than it runs (gpu_check --smoke: 67 CPU seconds against 130 under XLA's defaults; batching.py
    --smoke 47 against 84). `steps`: a run of many training steps, under XLA's defaults (curves.py, 50
    updates: 57 CPU seconds against 66 compiled fast), keeping freed memory as the xla_defaults children do."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(1, optimise=steps), JAX_PLATFORMS="cpu")
    if steps:
        env["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_row(stdout, prefix):
    rows = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, stdout
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


@pytest.mark.parametrize("script,args,prefix,columns", [
    ("inference.py", ["--seconds", "0.5", "--repeats", "1", "--torch-impls", "eager"], "| base | 1 x 0.5 |", 7),
    ("training.py", ["--models", "tiny", "--batch", "1", "--seconds", "0.5", "--repeats", "1"], "| tiny | 1 x 0.5 |", 7),
])
def test_benchmark_prints_its_table(script, args, prefix, columns):
    stdout = run_benchmark(script, *args)
    assert stdout.startswith("device: "), stdout
    cells = table_row(stdout, prefix)
    assert len(cells) == columns, cells
    speeds = [float(c) for c in cells[2:5]]  # hubert-jax and torch audio s/s, then the ratio of times
    assert all(s > 0 for s in speeds), cells
    assert re.fullmatch(r"n/a|\d+\.\d%", cells[-1]), cells  # MFU: no peak FLOPs on CPU


def test_corpus_inference_benchmark_times_every_setting_of_both_jobs():
    stdout = run_benchmark("inference.py", "--corpus", "--models", "tiny", "--limit", "6", "--torch-impls", "eager")
    assert stdout.startswith("device: ") and "6 files" in stdout, stdout
    for job in ("features", "ctc"):
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
                if line.startswith(f"| {job} |")]
        assert len(rows) == 4, stdout  # transformers alone and batched, hubert-jax with and without compilation
        assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows), rows
        assert min(float(r[4]) for r in rows if r[1].startswith("transformers")) == 1.0, rows


def test_batching_benchmark_prints_its_table():
    stdout = run_benchmark("batching.py", "--smoke")
    assert stdout.startswith("device: "), stdout
    for corpus in ("librispeech", "korean"):
        for scheme in ("fixed crops", "buckets"):
            rows = [line for line in stdout.splitlines() if line.startswith(f"| {corpus}") and f"| {scheme} |" in line]
            assert len(rows) == 1, stdout
            cells = [c.strip() for c in rows[0].strip("|").split("|")]
            assert cells[2].endswith("%") and cells[3].endswith("%") and int(cells[4]) >= 1 and float(cells[5]) > 0
        padding = [line for line in stdout.splitlines() if line.startswith(f"| {corpus}") and "| buckets |" in line]
        assert padding[0].split("|")[3].strip() == "0.0%"  # cropped to the bucket: no padding
    assert "audio s/s per core" in stdout.splitlines()[-1]


def test_gpu_check_smoke_runs_every_section():
    stdout = run_benchmark("gpu_check.py", "--smoke")
    for section in ("## 1. fused attention against XLA", "## 2. inference", "## 3. training step",
                    "## 4. one bucketed pretraining step per bucket"):
        assert section in stdout, stdout[-3000:]
    assert "FAILED" not in stdout and "4 of 4 sections ran" in stdout.splitlines()[-1], stdout[-3000:]
    assert len(table_row(stdout, "| hubert | auto |")) == 5 and len(table_row(stdout, "| 32000 | 2 |")) == 6


def test_gpu_check_names_what_is_missing(monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "NEEDED", ("numpy", "no_such_module_here"))
    assert gpu_check.main([]) == 2
    assert "gpu_check needs no_such_module_here" in capsys.readouterr().out


def test_checkpoint_benchmark_prints_its_table():
    stdout = run_benchmark("checkpoint.py", "--smoke")
    assert stdout.startswith("device: "), stdout
    for what in ("digest of every array", "save (sync, digest included)", "restore + verify", "digest / save"):
        assert float(table_row(stdout, f"| {what} |")[1]) > 0, stdout
    assert re.search(r"size on disk: [\d.]+ MiB = [\d.]+ x the arrays' bytes", stdout.splitlines()[-1]), stdout


def test_curves_benchmark_prints_both_sides(tmp_path):
    """benchmarks/curves.py smoke-sized: 50 updates of the HuBERT curve run, beside fairseq's recorded seeds."""
    stdout = run_benchmark("curves.py", "hubert", "--seeds", "0", "--steps", "50", "--workdir", str(tmp_path),
                           steps=True)
    assert "## hubert: fairseq (seeds 1, 2, 3)" in stdout, stdout
    assert table_row(stdout, "| train | 50 | accuracy_m |")[-1] in ("yes", "NO")
    assert "| steady state |" in stdout and "points outside fairseq's band:" in stdout


def test_labels_benchmark_measures_every_stage_at_two_sizes(tmp_path):
    """benchmarks/labels.py smoke-sized (36 and 72 s of audio, our stages only: fairseq lives in its own venv)."""
    stdout = run_benchmark("labels.py", "--hours", "0.01", "0.02", "--clusters", "20", "--workdir", str(tmp_path))
    for hours in ("0.01", "0.02"):
        for stage in ("mfcc", "kmeans", "label"):
            cells = table_row(stdout, f"| {hours} | {stage} | hubert-jax |")
            assert float(cells[3]) > 0 and float(cells[5]) > 0, cells  # wall s, peak anonymous MB
    assert re.search(r"\| hubert-jax \| [\d.]+ \| 0\.\d{3} \|", stdout), stdout  # inertia, PNMI
    assert "growth of peak anonymous memory from 0.01 h to 0.02 h" in stdout and "on 32" in stdout, stdout


def test_stage_benchmark_times_every_stage_against_transformers():
    stdout = run_benchmark("inference.py", "--stages", "--models", "tiny", "--seconds", "0.5", "--repeats", "1")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| tiny |")]
    assert [r[2] for r in rows] == ["conv feature encoder", "feature projection", "positional conv",
                                    "encoder layer 0", "encoder", "whole model"], stdout
    assert all(float(r[3]) > 0 and float(r[4]) > 0 and float(r[5]) > 0 for r in rows), rows


def test_bucket_reads_benchmark_reads_the_same_audio_from_disk_and_bucket():
    stdout = run_benchmark("bucket_reads.py", "--files", "12", "--threads", "1", "4", "--repeats", "1")
    assert stdout.splitlines()[0].startswith("12 utterances, "), stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith(("| local disk |", "| bucket (emulator) |"))]
    assert [(r[0], r[1]) for r in rows] == [(w, t) for w in ("local disk", "bucket (emulator)") for t in ("1", "4")]
    assert rows[0][4] == "1.00" and all(float(r[2]) > 0 and float(r[4].replace(",", "")) > 0 for r in rows), rows
