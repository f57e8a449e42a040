import sys

from hubert_jax.labels.cli import main

sys.exit(main())
