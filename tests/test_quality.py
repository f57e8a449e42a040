import numpy as np
import pytest

from hubert_jax.labels.quality import joint_counts, label_quality


def test_perfect_and_uninformative_clusterings():
    phones = [np.array([0, 0, 1, 1, 2, 2]), np.array([2, 1, 0])]
    perfect = label_quality(joint_counts(phones, [p + 5 for p in phones]))  # a relabelling
    assert perfect.pnmi == pytest.approx(1.0) and perfect.phone_purity == perfect.cluster_purity == 1.0
    single = label_quality(joint_counts(phones, [np.zeros_like(p) for p in phones]))
    assert single.pnmi == pytest.approx(0.0) and single.cluster_purity == 1.0
    assert single.phone_purity == pytest.approx(3 / 9)


def test_against_the_definitions_on_random_labels():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 6, 5000)
    z = (y * 3 + rng.randint(0, 3, 5000)) % 11  # informative but impure
    q = label_quality(joint_counts([y], [z]))
    p = np.zeros((6, 11))
    np.add.at(p, (y, z), 1)
    p /= p.sum()
    py, pz = p.sum(1), p.sum(0)
    mi = sum(p[i, j] * np.log(p[i, j] / (py[i] * pz[j])) for i in range(6) for j in range(11) if p[i, j] > 0)
    assert q.pnmi == pytest.approx(mi / -(py * np.log(py)).sum())
    assert q.phone_purity == pytest.approx(sum(pz[j] * (p[:, j] / pz[j]).max() for j in range(11) if pz[j] > 0))
    assert q.cluster_purity == pytest.approx(sum(py[i] * (p[i] / py[i]).max() for i in range(6)))
    assert 0 < q.pnmi < 1 and q.frames == 5000


def test_misaligned_labels_are_named():
    with pytest.raises(ValueError, match="utterance 1: 3 phone frames but 2 cluster frames"):
        joint_counts([np.zeros(2), np.zeros(3)], [np.zeros(2), np.zeros(2)])
