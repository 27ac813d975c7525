"""Fusion functions on hand-made tables: MinCE picks and ties, UDF weights and the sparse mixture."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusepipe.fuse.functions import mince_choice, mix_topk, sequence_ce, udf_weights


def test_mince_picks_the_lowest_ce_per_sample_and_ties_go_to_the_pivot():
    ce = np.array([[1.0, 2.0, 0.5, 3.0],   # pivot
                   [0.9, 2.0, 0.7, np.nan],  # source a (absent from sample 3)
                   [1.2, 1.5, 0.5, 3.5]])  # source b
    assert mince_choice(ce).tolist() == [1, 2, 0, 0]


def test_ce_per_token_or_per_byte():
    nll, tokens, nbytes = np.array([10.0, 6.0]), np.array([5, 2]), np.array([20, 12])
    assert sequence_ce(nll, tokens, nbytes, "token").tolist() == [2.0, 3.0]
    assert sequence_ce(nll, tokens, nbytes, "byte").tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="unknown CE normalisation 'char'; use token or byte"):
        sequence_ce(nll, tokens, nbytes, "char")


def test_per_byte_ce_removes_the_tokenization_bias():
    """Same text, same total NLL: a tokenizer with twice the tokens looks twice as good per token."""
    nll, tokens, nbytes = np.array([12.0, 12.0]), np.array([4, 8]), np.array([16, 16])
    per_token = sequence_ce(nll, tokens, nbytes, "token")
    per_byte = sequence_ce(nll, tokens, nbytes, "byte")
    assert mince_choice(per_token[:, None]).item() == 1
    assert mince_choice(per_byte[:, None]).item() == 0  # a tie per byte: the pivot


def test_udf_weights_follow_inverse_uncertainty():
    entropy = np.array([[1.0, 0.5], [3.0, 0.5]])
    ce = np.array([[1.0, 0.5], [1.0, 0.5]])
    valid = np.array([[True, True], [True, False]])
    w = udf_weights(entropy, ce, valid, 0.0)
    np.testing.assert_allclose(w[:, 0], [0.5 / (0.5 + 0.25), 0.25 / (0.5 + 0.25)])
    np.testing.assert_allclose(w[:, 1], [1.0, 0.0])  # an invalid candidate weighs nothing


def test_udf_column_without_valid_candidates_has_zero_weights():
    w = udf_weights(np.ones((2, 1)), np.ones((2, 1)), np.zeros((2, 1), bool), 1e-6)
    assert (w == 0).all()


def test_mixture_sums_shared_ids_and_keeps_the_k_most_probable():
    ids = np.array([[[5, 7, -1]], [[7, 9, 5]]])
    probs = np.array([[[0.6, 0.4, 0.0]], [[0.5, 0.3, 0.2]]])
    lp = np.log(np.where(probs > 0, probs, 1e-300))
    lp[ids < 0] = -np.inf
    w = np.array([[0.5], [0.5]])
    out_ids, out_lp = mix_topk(ids, lp, w, 3)
    assert out_ids.tolist() == [[7, 5, 9]]
    np.testing.assert_allclose(np.exp(out_lp[0]), [0.45, 0.4, 0.15], rtol=1e-6)
    out_ids, out_lp = mix_topk(ids, lp, w, 5)
    assert out_ids[0, 3:].tolist() == [-1, -1] and np.isneginf(out_lp[0, 3:]).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_mixture_keeps_mass_and_is_a_distribution(m, n, k, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 12, size=(m, n, k))
    for a in range(m):  # distinct ids per row, as top-k lists are
        for j in range(n):
            ids[a, j] = rng.choice(12, size=k, replace=False)
    p = rng.dirichlet(np.ones(k + 1), size=(m, n))[..., :k]  # top-k of a larger distribution
    w = rng.dirichlet(np.ones(m), size=n).T
    out_ids, out_lp = mix_topk(ids, np.log(p), w, m * k)
    total = np.where(out_ids >= 0, np.exp(out_lp), 0).sum(1)
    np.testing.assert_allclose(total, (w[..., None] * p).sum((0, 2)), rtol=1e-5)
    assert (total <= 1 + 1e-6).all()
    finite = np.where(np.isneginf(out_lp), -1e30, out_lp)
    assert (np.diff(finite, axis=1) <= 1e-7).all()
