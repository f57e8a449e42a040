"""The models import with jax, flax and numpy only: heavier libraries load where they are used."""

import subprocess
import sys


def test_import_pulls_in_nothing_beyond_jax_flax_numpy():
    # whatever `import jax, flax.nnx, numpy` loads (flax itself pulls optax) is allowed; nothing else
    code = (
        "import sys; import jax, flax.nnx, numpy; before = set(sys.modules); import hubert_jax; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'hubert_jax'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
