"""Regenerate the shipped demo corpus (needs Debian's espeak-ng: apt-get install espeak-ng).

    python scripts/make_demo_corpus.py --out data/demo [--en 130] [--ko 90] [--seed 0]
"""

import argparse
import os
import shutil
import tempfile

from hubert_jax.corpus.demo import synthesize_corpus, write_corpus


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/demo")
    p.add_argument("--en", type=int, default=130, help="English utterances")
    p.add_argument("--ko", type=int, default=90, help="Korean utterances")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    items = synthesize_corpus({"en": args.en, "ko": args.ko}, seed=args.seed)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo-corpus-", dir=os.path.dirname(out))
    counts = write_corpus(items, tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    seconds = sum(len(it.audio) for it in items) / 16000
    print(f"wrote {out}: {counts}, {seconds / 60:.1f} minutes of audio")


if __name__ == "__main__":
    main()
