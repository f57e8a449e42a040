"""A run's training curves against a reference run's: fairseq's, recorded by
`scripts/make_peer_fixtures.py --curves` (tests/fixtures/peer/curves/*.json, several seeds), and ours from
`{workdir}/metrics.jsonl`.

The band at an update is where the reference seeds landed, widened on each side by half their range or
by the metric's `floor`, whichever is larger (three seeds under-state the spread; the floor covers the
measurement's own noise: a valid split of 27 utterances scores about a thousand masked frames). A curve
"learns as the reference learns" when every compared point lies inside its band.
"""

from __future__ import annotations

import dataclasses
import json
import os

# the widening of the band where the seeds agree more closely than the figure can be measured
FLOORS = {"accuracy": 0.02, "accuracy_m": 0.02, "accuracy_u": 0.02, "loss": 0.1, "contrastive": 0.1,
          "code_perplexity": 8.0, "prob_perplexity": 8.0}


def read_metrics(workdir: str) -> dict[str, dict[int, dict]]:
    """{workdir}/metrics.jsonl as {"train": {step: row}, "valid": {step: row}} (a resumed run's later rows
    replace the earlier ones of the same step)."""
    out: dict[str, dict[int, dict]] = {"train": {}, "valid": {}}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.setdefault(row["split"], {})[int(row["step"])] = row
    return out


def read_reference(path: str) -> dict:
    """A recorded reference (make_peer_fixtures.py --curves): settings and, per seed, its train and valid rows."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def reference_points(reference: dict, split: str, metric: str, update: int) -> list[float]:
    """Every seed's value of `metric` at `update` (train: the window ending there; valid: the evaluation)."""
    values = []
    for run in reference["seeds"].values():
        for row in run[split]:
            if row["update"] == update and metric in row:
                values.append(float(row[metric]))
    return values


@dataclasses.dataclass
class Point:
    """One comparison of a learning curve: our value and fairseq's seeds' at an update, with the band it must lie in."""
    split: str
    metric: str
    update: int
    reference: list[float]
    ours: float
    low: float
    high: float

    @property
    def inside(self) -> bool:
        """Whether our value lies in the band."""
        return self.low <= self.ours <= self.high


def takeoff(rows: list[dict], metric: str, threshold: float) -> int | None:
    """The first logged update whose `metric` reaches `threshold` (None: never): when a run leaves its
    plateau. wav2vec 2.0's contrastive accuracy sits at chance for a few hundred updates and then rises within
    a few windows; when is a matter of the seed, so it is compared as a figure of its own."""
    for row in sorted(rows, key=lambda r: r["update"]):
        if row.get(metric, float("-inf")) >= threshold:
            return int(row["update"])
    return None


def band(values: list[float], floor: float) -> tuple[float, float]:
    """fairseq's seeds' range widened by half of itself on each side, at least `floor`."""
    lo, hi = min(values), max(values)
    widen = max((hi - lo) / 2, floor)
    return lo - widen, hi + widen


def compare(reference: dict, ours: dict[str, dict[int, dict]], checkpoints: dict[str, list[int]],
            metrics: dict[str, list[str]]) -> list[Point]:
    """Our value at each (split, update, metric) asked for against the reference seeds' band; a point the
    reference or our run lacks is an error (a compared point must exist on both sides)."""
    points = []
    for split, updates in checkpoints.items():
        for update in updates:
            for metric in metrics[split]:
                values = reference_points(reference, split, metric, update)
                if not values:
                    raise KeyError(f"the reference has no {split} {metric} at update {update}")
                if update not in ours.get(split, {}) or metric not in ours[split][update]:
                    raise KeyError(f"our run has no {split} {metric} at step {update}")
                low, high = band(values, FLOORS.get(metric, 0.0))
                points.append(Point(split, metric, update, values, float(ours[split][update][metric]), low, high))
    return points


def table(points: list[Point]) -> str:
    """One markdown row per point: the reference seeds, their band, ours and whether it lies inside."""
    rows = ["| split | update | metric | fairseq seeds | band | hubert-jax | inside |", "|---|---|---|---|---|---|---|"]
    for p in points:
        seeds = " / ".join(f"{v:.3f}" for v in p.reference)
        rows.append(f"| {p.split} | {p.update} | {p.metric} | {seeds} | {p.low:.3f} .. {p.high:.3f} | {p.ours:.3f} | "
                    f"{'yes' if p.inside else 'NO'} |")
    return "\n".join(rows)
