"""Token alignment of a source model's top-k distributions onto the pivot's tokens (FuseChat §2.3).

Pure arrays in, arrays out, per shard; the `align` stage calls, per (pivot, source) pair:

    src_t, piv_t = token_table(src_tok), token_table(piv_tok)           # once per tokenizer
    links = align(src_ids, src_ptr, piv_ids, piv_ptr, src_t, piv_t, mode=...)   # per shard: DTW / offsets
    counts = reduce_counts([count_links(links, src_ids, piv_ids, src_t.size, piv_t.size), ...])  # all shards
    vmap = vocab_map("ms", src_t, piv_t, counts)                        # once per pair
    proj = project(links, piv_ids, src_ids, topk_ids, topk_logprobs, vmap, counts=counts)       # per shard
    sums = merge_counts([coverage_counts(links, proj, topk_ids, topk_logprobs, vmap), ...])    # all shards
    report = coverage_report(sums, vmap)                                # -> coverage.json

Same tokenizer and same tokens (`src_t.fingerprint == piv_t.fingerprint`): `copy_through` instead.
"""

from fusepipe.align.coverage import coverage_counts, coverage_report, merge_counts
from fusepipe.align.dtw import MODES, Links, align, link_kinds, units_from_offsets
from fusepipe.align.project import N_TO_ONE, Projected, copy_through, project
from fusepipe.align.stats import MappingCounts, count_links, link_pairs, reduce_counts
from fusepipe.align.tokens import TokenTable, table_from_strings, token_table
from fusepipe.align.vocab import STRATEGIES, exact_match, min_edit_distance, vocab_map

__all__ = [
    "MODES",
    "N_TO_ONE",
    "STRATEGIES",
    "Links",
    "MappingCounts",
    "Projected",
    "TokenTable",
    "align",
    "copy_through",
    "count_links",
    "coverage_counts",
    "coverage_report",
    "exact_match",
    "link_kinds",
    "link_pairs",
    "merge_counts",
    "min_edit_distance",
    "project",
    "reduce_counts",
    "table_from_strings",
    "token_table",
    "units_from_offsets",
    "vocab_map",
]
