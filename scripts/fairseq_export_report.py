"""The README's table of exports to fairseq: for each export of tests/test_export_fairseq.py, the max abs
difference between fairseq's outputs on the exported file (tests/fixtures/peer/export, recorded by
`scripts/make_peer_fixtures.py --exports`) and hubert-jax's on the same file read back, both fixture clips.

    python scripts/fairseq_export_report.py
"""

import os
import sys
import tempfile

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import test_export_fairseq as exports  # noqa: E402

from hubert_jax.convert.cli import main as convert  # noqa: E402


def main() -> int:
    work = tempfile.mkdtemp(prefix="fairseq-export-report-")
    paths = exports.make_exports(work)
    print("| export | every hidden state | head output |\n|---|---|---|")
    for name in sorted(paths):
        ref = dict(np.load(os.path.join(exports.EXPORTED, f"{name}.npz")))
        back = os.path.join(work, f"back_{name}")
        convert([paths[name], back])
        auto, key, theirs = exports.read_back(name)
        model = auto.from_pretrained(back)
        layers = head = 0.0
        for i, x in enumerate(exports.clips()):
            out = model(jnp.asarray(x)[None], output_hidden_states=True)
            for layer, h in enumerate(out.hidden_states):
                layers = max(layers, float(np.abs(np.asarray(h[0]) - ref[f"hidden_{i}_{layer}"]).max()))
            head = max(head, float(np.abs(np.asarray(getattr(out, key)[0]) - ref[f"{theirs}_{i}"]).max()))
        print(f"| {name} | {layers:.1e} | {head:.1e} ({key}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
