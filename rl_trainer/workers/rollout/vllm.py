"""Rollout with vLLM inside the actor's worker process (verl's hybrid engine): `actor_rollout_ref.rollout.name=vllm`.

One engine per worker, started once, without reading weights from disk (`load_format=dummy`); before every
generation the actor's FSDP parameters are gathered one at a time and pushed into the engine in buckets of at most
`rollout.update_weights_bucket_megabytes`, so no rank ever holds a second full copy of the model.

How the engine shares the process with FSDP. The worker already belongs to its group's torch.distributed world
(gloo on CPU, NCCL on GPU). vLLM's default in-process executor calls `init_process_group` with a world of its own
size (tensor_parallel_size) and fails inside an existing world of another size ("world size does not match").
vLLM's `external_launcher` executor is made for this: it adopts the already-initialised world (the torchrun case),
builds its own tensor-parallel groups inside it, and treats the world's remaining dimension as independent data-
parallel replicas. With tensor_model_parallel_size=1 every rank is an engine of its own that generates its own
slice of the batch. The workers' collectives are unaffected (tests/workers/test_rollout_vllm.py). The engine runs
in the worker's process (VLLM_ENABLE_V1_MULTIPROCESSING=0, required by external_launcher), so weights move by
reference: no serialisation, no second process.

Weights go in with `LLM.collective_rpc("reload_weights", weights_iterator=...)` where the model runner has it
(recent releases, found by signature at start-up): vLLM's own in-place reload, which takes checkpoint-format
(Hugging Face) names and tensors in any number of partial calls and redoes the kernel-specific processing. Older
releases get `LLM.apply_model(lambda model: model.load_weights(...))`; that path does not work on CPU, where vLLM
repacks weights for its kernels.

Memory on GPU: with `rollout.free_cache_engine=true` the engine runs in sleep mode; after generating it sleeps at
level 2 (weights and KV cache released), and wakes in two stages: weights (then the push), then the KV cache. On CPU
sleep mode does not exist and the engine keeps its memory (VLLM_CPU_KVCACHE_SPACE GiB of KV cache, default 1 here).

Log-probs: the engine returns the log-prob of each sampled token, `logprobs_mode=processed_logprobs` (after
temperature, like the actor's log_softmax(logits / temperature)); they become `rollout_log_probs`, from which the
trainer logs training/rollout_probs_diff_*. With top-k/top-p on, the engine's processed log-probs are renormalised
over the kept tokens and the actor's are not, so the gap is then not a pure sync check.

Sampling seeds: one seed per request, drawn from the worker's torch generator (saved with every checkpoint), so a
resumed run samples what an uninterrupted one would have.
"""

from __future__ import annotations

import inspect
import os
from typing import Iterable, Iterator

import torch
from packaging.version import Version

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.workers.rollout.base import Rollout, SamplingParams, assemble, pad_prompts

MIN_VLLM = (0, 10, 2)  # logprobs_mode="processed_logprobs", sleep/wake_up(tags), LLM.collective_rpc, LLM.apply_model


def import_vllm():
    """The vllm module, or a one-line error saying how to get a usable one."""
    try:
        import vllm
    except ImportError as exc:
        raise UserError(f"actor_rollout_ref.rollout.name=vllm but vllm cannot be imported ({exc}); pip install "
                        f"'rl_trainer[vllm]' on a GPU machine (README: vLLM), or use actor_rollout_ref.rollout.name=hf"
                        ) from None
    if Version(vllm.__version__).release < MIN_VLLM:
        raise UserError(f"actor_rollout_ref.rollout.name=vllm needs vllm >= {'.'.join(map(str, MIN_VLLM))} (installed: "
                        f"{vllm.__version__}); pip install -U 'rl_trainer[vllm]'")
    return vllm


def cpu_thread_binding(local_rank: int, threads: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for one worker: its own `threads` cores among those this process may use, so the
    engines of the workers on one machine do not all pin their OpenMP threads to the same cores."""
    cores = sorted(os.sched_getaffinity(0))
    start = (local_rank * threads) % len(cores)
    return ",".join(str(cores[(start + i) % len(cores)]) for i in range(min(threads, len(cores))))


class VLLMRollout(Rollout):
    def __init__(self, model_path: str, tokenizer, rollout_cfg, prompt_length: int, response_length: int,
                 device: torch.device, local_rank: int, threads: int, return_log_probs: bool = True,
                 trust_remote_code: bool = False):
        vllm = import_vllm()
        self.response_length, self.prompt_length = response_length, prompt_length
        self.return_log_probs = return_log_probs
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = sorted({i for i in (tokenizer.eos_token_id,) if i is not None})
        self.bucket_bytes = int(rollout_cfg.update_weights_bucket_megabytes * 2**20)
        self.sleep_mode = device.type == "cuda" and bool(rollout_cfg.free_cache_engine)
        self.asleep = False

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine lives in this process (external_launcher)
        os.environ["LOCAL_RANK"] = str(device.index or 0)  # the device this worker uses (Ray shows it as cuda:0)
        if device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding(local_rank, threads))
        engine_args = dict(
            model=model_path, tokenizer=model_path, skip_tokenizer_init=False, trust_remote_code=trust_remote_code,
            load_format=rollout_cfg.load_format,
            dtype=rollout_cfg.dtype if device.type == "cuda" else "float32",
            tensor_parallel_size=1,  # config.py rejects other sizes: each engine generates its own worker's rows
            distributed_executor_backend="external_launcher",
            gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
            max_model_len=rollout_cfg.max_model_len or prompt_length + response_length,
            max_num_batched_tokens=rollout_cfg.max_num_batched_tokens, max_num_seqs=rollout_cfg.max_num_seqs,
            enforce_eager=rollout_cfg.enforce_eager, enable_chunked_prefill=rollout_cfg.enable_chunked_prefill,
            enable_prefix_caching=rollout_cfg.enable_prefix_caching, disable_log_stats=rollout_cfg.disable_log_stats,
            enable_sleep_mode=self.sleep_mode, logprobs_mode="processed_logprobs", seed=0,
            **dict(rollout_cfg.engine_kwargs.vllm or {}),
        )
        self.llm = vllm.LLM(**engine_args)
        self._vllm = vllm
        self.reload_in_place = all(self.llm.collective_rpc(_runner_reloads_from_iterator))
        if self.sleep_mode:
            self._sleep()

    # ---------------------------------------------------------------------------------------------- weights
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push (name, full tensor) pairs into the engine, a bucket at a time; wakes the engine's weights first."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        for bucket in _buckets(named_tensors, self.bucket_bytes):
            if self.reload_in_place:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(bucket)})
            else:
                self.llm.apply_model(lambda model, weights=bucket: model.load_weights(weights))
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def _sleep(self) -> None:
        self.llm.reset_prefix_cache()
        self.llm.sleep(level=2)  # weights and KV cache: the next update_weights brings both back
        self.asleep = True

    # ------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, batch: Batch, sampling: SamplingParams) -> Batch:
        """Responses, the engine's log-prob of each sampled token (`rollout_log_probs`, when sampling and asked) and
        `finish_reason` ("stop" at EOS, "length" at rollout.response_length) for each row."""
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: update_weights must run before generate")
        batch = pad_prompts(batch, self.prompt_length, self.pad_id)
        prompts, prompt_mask = batch["prompts"], batch["attention_mask"]
        rows = prompts.shape[0]
        sample = sampling.do_sample and sampling.temperature > 0
        with_log_probs = sample and self.return_log_probs
        seeds = torch.randint(0, 2**31 - 1, (rows,)).tolist() if sample else [None] * rows
        requests = [self._vllm.inputs.TokensPrompt(prompt_token_ids=p[m.bool()].tolist())
                    for p, m in zip(prompts, prompt_mask)]
        params = [self._vllm.SamplingParams(
            n=1, temperature=sampling.temperature if sample else 0.0, top_p=sampling.top_p if sample else 1.0,
            top_k=sampling.top_k if sample and sampling.top_k > 0 else 0, max_tokens=self.response_length,
            stop_token_ids=self.eos_ids, logprobs=0 if with_log_probs else None, seed=seed, detokenize=False,
        ) for seed in seeds]
        outputs = self.llm.generate(requests, params, use_tqdm=False)

        responses = torch.full((rows, self.response_length), self.pad_id, dtype=prompts.dtype)
        response_mask = torch.zeros((rows, self.response_length), dtype=torch.int64)
        log_probs = torch.zeros((rows, self.response_length), dtype=torch.float32)
        finish_reasons = []
        for i, output in enumerate(outputs):
            completion = output.outputs[0]
            length = len(completion.token_ids)
            responses[i, :length] = torch.tensor(completion.token_ids, dtype=prompts.dtype)
            response_mask[i, :length] = 1
            if with_log_probs:
                log_probs[i, :length] = torch.tensor(
                    [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)])
            finish_reasons.append(completion.finish_reason)
        if self.sleep_mode:
            self._sleep()
        tensors = assemble(prompts, prompt_mask, batch["position_ids"], responses, response_mask)
        if with_log_probs:
            tensors["rollout_log_probs"] = log_probs
        return Batch(tensors, {**batch.non_tensors, "finish_reason": finish_reasons}, dict(batch.meta))


def _runner_reloads_from_iterator(worker) -> bool:
    """Run inside the engine's worker: does its model runner's reload_weights take weights_iterator?"""
    reload = getattr(getattr(worker, "model_runner", None), "reload_weights", None)
    return reload is not None and "weights_iterator" in inspect.signature(reload).parameters


def _buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list]:
    """Consecutive groups of (name, tensor) of at most `max_bytes` each (a larger tensor goes alone)."""
    bucket, size = [], 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket

