"""Is RSAF's tiny keep-ratio with the element-wise rate (InfiFusion Eq. 8-10) the toy scale or the formula?

The element-wise rate r = |δ| / (|θ| + ε) is a ratio of two variables whose denominator has density at 0 (weights
near zero), so it has no finite variance: its sample skewness grows with the number of elements n, and the keep
ratio K = τ / (1 + S) shrinks with the matrix. This script draws θ and δ as a fine-tune would have them
(θ ~ N(0, 0.02²), δ ~ N(0, (c·0.02)²) with c = 1e-3, a realistic small update, and c = 0.1) for growing n, and
compares with the matrix-level rate (`rate: matrix`: |δ| / RMS(θ), the order and shape of |δ|, whose skewness is
that of a half-normal, ~1). Prints median skewness and K over 5 draws per size.

    python benchmarks/rsaf_rate_skewness.py
"""

from __future__ import annotations

import numpy as np


def skewness(x: np.ndarray) -> float:
    c = x - x.mean()
    m2, m3 = (c**2).mean(), (c**3).mean()
    return float(m3 / m2**1.5) if m2 > 0 else 0.0


def main(tau: float = 0.1) -> None:
    print(f"{'n':>10} {'scale c':>8} {'S element':>10} {'K element':>10} {'S matrix':>9} {'K matrix':>9}")
    for n in (10_000, 100_000, 1_000_000, 4_000_000):
        for c in (1e-3, 1e-1):
            el, mat = [], []
            for seed in range(5):
                rng = np.random.default_rng(seed)
                theta = rng.normal(0, 0.02, n)
                delta = rng.normal(0, 0.02 * c, n)
                el.append(skewness(np.abs(delta) / (np.abs(theta) + 1e-8)))
                mat.append(skewness(np.abs(delta) / (np.sqrt((theta**2).mean()) + 1e-8)))
            s_el, s_mat = float(np.median(el)), float(np.median(mat))
            k = [min(1.0, tau / (1 + s)) if s >= 0 else tau * (1 + abs(s)) for s in (s_el, s_mat)]
            print(f"{n:>10} {c:>8.0e} {s_el:>10.1f} {k[0]:>10.5f} {s_mat:>9.2f} {k[1]:>9.4f}")


if __name__ == "__main__":
    main()
