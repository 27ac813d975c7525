"""Token alignment: compiled DTW + mapping statistics against the pure-Python transcription of the reference.

    PYTHONPATH=src python benchmarks/bench_align.py [--samples 10] [--seed 0]

One run measures, on the same sample pairs (English documentation text shipped with CPython, `pydoc_data`,
tokenized by a byte-level Ġ BPE source and a ▁ BPE pivot with byte fallback, 8k vocabularies each):
1. per sample of 100–2000 pivot tokens, core-seconds of the reference (`reference.align_and_count`: DTW in
   Python, one dict count per link) and of fusepipe (`align` faithful + `count_links`, one thread), the
   faithful links checked equal to the reference's; the median ratio (goal ≥ 300×);
2. extrapolation to FuseChat's setting, 95k samples of ~500 target tokens for one pair (Appendix E reports
   ~6 CPU-hours on 32 threads; goal ≤ 10 core-minutes), from a batch of ~500-token samples on all threads;
3. the options beyond the paper on the ~500-token batch: band radii and offsets alignment, their time and
   agreement with the faithful path (share of pivot tokens with the same linked source tokens).
Times are process CPU times (core-seconds); medians, since the machine is noisy.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from pydoc_data.topics import topics

import numba
import numpy as np

from fusepipe.align import align, count_links, reduce_counts, token_table
from fusepipe.align import reference as ref
from fusepipe.toy.tokenizers import CHATML_TEMPLATE, LLAMA_TEMPLATE, TokenizerSpec, build_tokenizer

FUSECHAT_SAMPLES, FUSECHAT_TOKENS = 95_000, 500
HEADER = f"{'src×piv tokens':>16} {'reference':>10} {'fusepipe':>10} {'ratio':>8} {'ref µs/cell':>12}"


def corpus() -> list[str]:
    text = "\n".join(topics[k] for k in sorted(topics))
    return [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 40]


def tokenizers(paragraphs: list[str]):
    src = TokenizerSpec("bytelevel_bpe", 8000, CHATML_TEMPLATE, None, "<|endoftext|>", "<|endoftext|>", None)
    piv = TokenizerSpec("metaspace_bpe", 8000, LLAMA_TEMPLATE, "<s>", "</s>", "<pad>", "<unk>")
    return build_tokenizer(src, paragraphs), build_tokenizer(piv, paragraphs)


def samples(paragraphs, src_tok, piv_tok, lengths, rng):
    """(source ids, pivot ids) of texts of consecutive paragraphs with about `length` pivot tokens each."""
    out = []
    for length in lengths:
        at, text = rng.randrange(len(paragraphs)), ""
        while len(piv_tok(text, add_special_tokens=False)["input_ids"]) < length:
            text += ("\n\n" if text else "") + paragraphs[at % len(paragraphs)]
            at += 1
        piv = piv_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        src = src_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        cut = next(i for i, (_, e) in enumerate(piv["offset_mapping"]) if i + 1 >= length)
        end = piv["offset_mapping"][cut][1]
        keep = [i for i, (s, _) in enumerate(src["offset_mapping"]) if s < end]
        out.append(
            (
                np.array(src["input_ids"], np.int32)[keep],
                np.array(src["offset_mapping"], np.int64)[keep],
                np.array(piv["input_ids"][: cut + 1], np.int32),
                np.array(piv["offset_mapping"][: cut + 1], np.int64),
            )
        )
    return out


def cpu(fn, *args, **kwargs):
    t = time.process_time()
    result = fn(*args, **kwargs)
    return time.process_time() - t, result


def batch(pairs):
    """Flat arrays of many samples, one unit each."""
    ptr = lambda k: np.cumsum([0] + [len(p[k]) for p in pairs]).astype(np.int64)
    cat = lambda k: np.concatenate([p[k] for p in pairs])
    return cat(0), cat(1), ptr(0), cat(2), cat(3), ptr(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--samples", type=int, default=10, help="sample pairs of 100–2000 tokens run through both"
    )
    parser.add_argument("--batch", type=int, default=200, help="~500-token samples for the extrapolation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    paragraphs = corpus()
    src_tok, piv_tok = tokenizers(paragraphs)
    src_t, piv_t = token_table(src_tok), token_table(piv_tok)
    src_s, piv_s = src_t.texts(), piv_t.texts()
    threads = numba.get_num_threads()
    print(
        f"corpus: {len(paragraphs)} paragraphs of CPython's pydoc topics; vocabularies {src_t.size} (Ġ BPE "
        f"source) and {piv_t.size} (▁ BPE pivot); numba threads {threads}"
    )

    def ours(s_ids, p_ids):
        links = align(s_ids, [0, len(s_ids)], p_ids, [0, len(p_ids)], src_t, piv_t)
        return links, count_links(links, s_ids, p_ids, src_t.size, piv_t.size)

    def reference(s_ids, p_ids):
        strings = [src_s[i] for i in s_ids], [piv_s[i] for i in p_ids]
        return ref.align_and_count(strings[0], s_ids.tolist(), strings[1], p_ids.tolist(), {})

    warm = samples(paragraphs, src_tok, piv_tok, [50], rng)[0]
    ours(warm[0], warm[2])  # compile, or load the cache, outside the timings

    # 1. per sample against the reference
    lengths = sorted(round(100 * 20 ** rng.random()) for _ in range(args.samples))
    pairs = samples(paragraphs, src_tok, piv_tok, lengths, rng)
    print(f"\n1. per sample, core-seconds of faithful DTW + MS counts, one thread\n{HEADER}")
    numba.set_num_threads(1)
    ratios = []
    for s_ids, _, p_ids, _ in pairs:
        t_ref, expected = cpu(reference, s_ids, p_ids)
        t_ours = statistics.median(cpu(ours, s_ids, p_ids)[0] for _ in range(3))
        links, _ = ours(s_ids, p_ids)
        got = [list(range(a, b)) for a, b in zip(links.src_start, links.src_stop)]
        assert got == expected, "the faithful links differ from the reference's"
        ratios.append(t_ref / t_ours)
        us_per_cell = t_ref / (len(s_ids) * len(p_ids)) * 1e6
        print(
            f"{len(s_ids):>7}×{len(p_ids):<8} {t_ref:>9.2f}s {t_ours * 1e3:>8.2f}ms {t_ref / t_ours:>7.0f}× "
            f"{us_per_cell:>11.2f}"
        )
    print(
        f"median ratio {statistics.median(ratios):.0f}× fewer core-seconds (goal ≥ 300×); links identical to "
        f"the reference's on all {len(pairs)} samples"
    )

    # 2. FuseChat's setting, on all threads
    numba.set_num_threads(threads)
    five = samples(paragraphs, src_tok, piv_tok, [FUSECHAT_TOKENS] * args.batch, rng)
    s_ids, s_sp, s_ptr, p_ids, p_sp, p_ptr = batch(five)

    def shard():
        links = align(s_ids, s_ptr, p_ids, p_ptr, src_t, piv_t)
        return links, reduce_counts([count_links(links, s_ids, p_ids, src_t.size, piv_t.size)])

    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        core, (full, _) = cpu(shard)
        runs.append((core, time.perf_counter() - t0))
    core, wall = (statistics.median(r[k] for r in runs) for k in (0, 1))
    minutes = core / len(five) * FUSECHAT_SAMPLES / 60
    print(
        f"\n2. FuseChat's setting: {len(five)} samples of {FUSECHAT_TOKENS} pivot tokens (source "
        f"{len(s_ids) / len(five):.0f}), {threads} threads: {core:.2f} core-s, {wall:.2f} s wall, "
        f"{core / len(five) * 1e3:.2f} core-ms per sample\n"
        f"   × {FUSECHAT_SAMPLES:,} samples = {minutes:.1f} core-minutes (goal ≤ 10). The paper's ~6 CPU-hours "
        f"with 32 threads: {360 / minutes:.0f}× more if 6 core-hours, "
        f"{360 * 32 / minutes:.0f}× if 6 h on 32"
    )

    # 3. options beyond the paper, on the same batch
    print(f"\n3. options on the same {len(five)} samples: align core-s, agreement with the faithful path")
    options = [("faithful", {})] + [(f"band {r}", {"mode": "band", "band": r}) for r in (2, 8, 32)]
    for label, kwargs in options + [("offsets", {"mode": "offsets"})]:
        kwargs |= {"src_spans": s_sp, "piv_spans": p_sp}
        t = statistics.median(
            cpu(align, s_ids, s_ptr, p_ids, p_ptr, src_t, piv_t, **kwargs)[0] for _ in range(3)
        )
        got = align(s_ids, s_ptr, p_ids, p_ptr, src_t, piv_t, **kwargs)
        same = np.mean((got.src_start == full.src_start) & (got.src_stop == full.src_stop))
        kinds = np.bincount(got.kind, minlength=4)[1:] / len(got.kind)
        print(
            f"   {label:<9} {t:>6.2f} core-s  same links {same:6.1%}  DTW objective "
            f"{got.cost.sum() / full.cost.sum():.3f}× faithful's  1-1/1-n/n-1 {np.round(kinds, 3)}"
        )


if __name__ == "__main__":
    main()
