"""Built-in models: tiny random-init Qwen2s with their own tokenizers, built on first use.

    builtin:tiny-qwen2    the default model (GSM8K tokenizer) and the benchmark workload, below
    builtin:tiny-digits   a smaller Qwen2 with one token per character of the digit-shift task
                          (rl_trainer/data/digit_shift.py): the model that shows learning from scratch
    builtin:tiny-sort     the same size, for the digit-sort task of the RLHF pipeline (rl_trainer/data/digit_sort.py):
                          its chat template ends assistant turns with EOS and its pad token is not EOS, so SFT
                          trains the stop and a reward model scores the EOS position
    builtin:tiny-sort-rm  the digit-sort tokenizer on a wider Qwen2 (hidden 256, 2.6M parameters, 4x the policy):
                          the reward model of the RLHF pipeline, trained from random init on preference pairs

No pretrained weights are needed to run or test rl_trainer: `actor_rollout_ref.model.path=builtin:<name>`
resolves to a directory that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load like any hub checkpoint. builtin:tiny-qwen2 is also the standard benchmark workload, so its shape is fixed:

    Qwen2ForCausalLM(Qwen2Config(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024,
        tie_word_embeddings=True))                      ~3.9M parameters, float32, random init from `seed`

    tokenizer: byte-level BPE, exactly 4,096 tokens, trained on the GSM8K train questions + answers with
    Qwen2's own normalizer and pre-tokenizer (NFC, Qwen's digit-splitting regex, ByteLevel without regex),
    because `AutoTokenizer` rebuilds exactly that pipeline for a tokenizer saved next to a qwen2 config
    and any other pre-tokenizer would change the ids after reload. Special tokens: <|endoftext|> (id 0,
    EOS and pad), <|im_start|> (1), <|im_end|> (2); a ChatML chat template.

The cache lives in `$RL_TRAINER_CACHE` (default `~/.cache/rl_trainer`) under
`models/<name>-seed<seed>-v1/`. Bump `CACHE_VERSION` whenever what is built changes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from rl_trainer.atomic import publish_dir, temp_sibling
from rl_trainer.cache import cache_root
from rl_trainer.errors import UserError

BUILTIN_PREFIX = "builtin:"
CACHE_VERSION = "v1"
# Written last into a finished build; a directory without it is not a usable model.
COMPLETE_MARKER = "builtin_model.json"
# Temporary build directories older than this are left-overs of a killed build and are removed.
STALE_BUILD_SECONDS = 3600

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY_QWEN2 = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


# builtin:tiny-digits: 13 tokens (EOS/pad, ten digits, the filler "." and "=", which the chat template
# appends as the generation prompt). Small enough that a 2-core CPU runs an RL step in about a second.
DIGITS_VOCAB = (EOS_TOKEN, *"0123456789", ".", "=")
DIGITS_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"
TINY_DIGITS = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=len(DIGITS_VOCAB),
    max_position_embeddings=64,
    tie_word_embeddings=True,
)

# builtin:tiny-sort: pad, EOS, ten digits and "=" (which closes every user turn, so the generation prompt is empty
# and the template is prefix-consistent for SFT's per-turn masking).
SORT_VOCAB = ("<pad>", EOS_TOKEN, *"0123456789", "=")
SORT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
                 "{{ message['content'] + '" + EOS_TOKEN + "' }}{% else %}{{ message['content'] + '=' }}{% endif %}"
                 "{% endfor %}")
TINY_SORT = dict(TINY_DIGITS, num_hidden_layers=4, vocab_size=len(SORT_VOCAB))
# The pipeline's reward model: a policy-sized RM (from the SFT model or from scratch) stays near 77-84 % held-out
# pairwise accuracy on digit-sort; this wider one learns the pairs from scratch to >= 90 % (docs/rlhf.md).
TINY_SORT_RM = dict(TINY_SORT, hidden_size=256, intermediate_size=512)


def resolve_model_path(path: str, seed: int = 0) -> str:
    """"builtin:<name>" -> the directory of that built-in model (built on first use); anything else unchanged.

    Any other string is a hub id or a local directory, loaded later with `from_pretrained`.
    """
    if not str(path).startswith(BUILTIN_PREFIX):
        return path
    return str(ensure_builtin_model(str(path)[len(BUILTIN_PREFIX) :], seed=seed))


def critic_tokenizer_dir(tokenizer_path: str | None, critic_dir: str, actor_path: str, actor_dir: str,
                         seed: int = 0) -> str:
    """The folder critic.model.tokenizer_path names, as verl 0.9.1's HFModelConfig reads it: null -> the critic's
    own folder `critic_dir`; the actor's model.path `actor_path` (rl_trainer's default) -> the folder it resolved
    to, `actor_dir`; anything else resolved like a model path (resolve_model_path)."""
    if not tokenizer_path:
        return critic_dir
    if tokenizer_path == actor_path:
        return actor_dir
    return resolve_model_path(tokenizer_path, seed=seed)


def ensure_builtin_model(name: str = "tiny-qwen2", seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of built-in model `name` with weights from `seed`, building it if it is not cached yet.

    cache_dir replaces the cache root (`$RL_TRAINER_CACHE` / ~/.cache/rl_trainer); the model lands in
    `<root>/models/<name>-seed<seed>-v1/`. The build happens in a temporary directory next to the target
    and is renamed into place in one step, so concurrent builders are safe: the first rename wins and the
    others delete their copy.
    """
    if name not in _BUILDERS:
        known = ", ".join(BUILTIN_PREFIX + n for n in _BUILDERS)
        raise UserError(
            f"unknown built-in model {BUILTIN_PREFIX}{name}; known: {known} (or pass a hub id or local directory)"
        )
    root = Path(cache_dir).expanduser().absolute() if cache_dir is not None else cache_root()
    target = root / "models" / f"{name}-seed{seed}-{CACHE_VERSION}"
    if _is_complete(target):
        return target
    _check_not_squatted(target)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the built-in model cache {target.parent} ({e.strerror}); "
            f"set RL_TRAINER_CACHE to a writable directory"
        ) from e
    _remove_stale_builds(target)
    tmp = temp_sibling(target)
    tmp.mkdir()
    try:
        print(f"building the built-in model {BUILTIN_PREFIX}{name} (seed {seed}) in {target} (first run only)", flush=True)
        start = time.perf_counter()
        _BUILDERS[name](tmp, seed)
        seconds = round(time.perf_counter() - start, 2)
        marker = {"name": name, "seed": seed, "cache_version": CACHE_VERSION, "build_seconds": seconds}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            publish_dir(tmp, target)  # one rename; fails if another builder's complete directory is already there
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return target


def tiny_qwen2_config():
    """The Qwen2Config of builtin:tiny-qwen2 (token ids of the built-in tokenizer included)."""
    from transformers import Qwen2Config

    eos_id = SPECIAL_TOKENS.index(EOS_TOKEN)
    return Qwen2Config(**TINY_QWEN2, bos_token_id=None, eos_token_id=eos_id, pad_token_id=eos_id, dtype="float32")


def train_gsm8k_tokenizer(vocab_size: int = 4096):
    """A `tokenizers.Tokenizer`: byte-level BPE trained on GSM8K train questions + answers, Qwen2 pipeline."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from rl_trainer.data.gsm8k import BUNDLED_DIR

    # The bundled jsonl is read directly: datasets' loader would write an arrow cache into the user's home.
    with open(BUNDLED_DIR / "train.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    texts = [text for row in rows for text in (row["question"], row["answer"])]

    tokenizer = Tokenizer(BPE())
    # Same normalizer / pre-tokenizer / decoder as transformers' Qwen2Tokenizer.__init__ builds on load.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if tokenizer.get_vocab_size() != vocab_size:  # GSM8K has far more than enough merges; guard anyway
        raise RuntimeError(f"BPE training produced {tokenizer.get_vocab_size()} tokens, expected {vocab_size}")
    return tokenizer


def build_tokenizer(trained=None):
    """The transformers tokenizer of builtin:tiny-qwen2 (a Qwen2Tokenizer over the trained vocab and merges)."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    trained = trained or train_gsm8k_tokenizer()
    bpe = json.loads(trained.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(pair) for pair in bpe["merges"]],
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=TINY_QWEN2["max_position_embeddings"],
    )
    tokenizer.add_special_tokens({"extra_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_digits_tokenizer():
    """One token per character of the digit tasks (word-level vocabulary, characters split by a regex).

    Saved next to a qwen2 config, `AutoTokenizer` reloads it as a Qwen2Tokenizer whose byte-level pipeline
    maps these ASCII characters to themselves, so the ids survive the round trip (tests/models checks it).
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({token: i for i, token in enumerate(DIGITS_VOCAB)}, unk_token=EOS_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=EOS_TOKEN,
        model_max_length=TINY_DIGITS["max_position_embeddings"],
    )
    tokenizer.chat_template = DIGITS_TEMPLATE
    return tokenizer


def build_sort_tokenizer():
    """One token per character of the digit-sort task; "<pad>" (id 0) pads, EOS (id 1) ends a response."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({token: i for i, token in enumerate(SORT_VOCAB)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, pad_token="<pad>", unk_token="<pad>",
        model_max_length=TINY_SORT["max_position_embeddings"],
    )
    tokenizer.chat_template = SORT_TEMPLATE
    return tokenizer


def _build_sort_model(shape: dict) -> Callable[[Path, int], None]:
    """The builder of a digit-sort model of `shape` (builtin:tiny-sort and builtin:tiny-sort-rm)."""

    def build(out_dir: Path, seed: int) -> None:
        from transformers import Qwen2Config

        eos_id, pad_id = SORT_VOCAB.index(EOS_TOKEN), SORT_VOCAB.index("<pad>")
        config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, dtype="float32")
        _save_random_qwen2(out_dir, seed, build_sort_tokenizer(), config)

    return build


def _build_tiny_qwen2(out_dir: Path, seed: int) -> None:
    _save_random_qwen2(out_dir, seed, build_tokenizer(), tiny_qwen2_config())


def _build_tiny_digits(out_dir: Path, seed: int) -> None:
    from transformers import Qwen2Config

    eos_id = DIGITS_VOCAB.index(EOS_TOKEN)
    config = Qwen2Config(**TINY_DIGITS, bos_token_id=None, eos_token_id=eos_id, pad_token_id=eos_id, dtype="float32")
    _save_random_qwen2(out_dir, seed, build_digits_tokenizer(), config)


def _save_random_qwen2(out_dir: Path, seed: int, tokenizer, config) -> None:
    """Save a Qwen2ForCausalLM(config) initialised from `seed`, and `tokenizer`, as a from_pretrained directory."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    show_progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the one "building ..." line is all a first run should print
    try:
        model.save_pretrained(out_dir)
    finally:
        if show_progress:
            hf_logging.enable_progress_bar()
    # save_jinja_files=False keeps the chat template inside tokenizer_config.json (read by every version).
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)


_BUILDERS = {"tiny-qwen2": _build_tiny_qwen2, "tiny-digits": _build_tiny_digits,
             "tiny-sort": _build_sort_model(TINY_SORT), "tiny-sort-rm": _build_sort_model(TINY_SORT_RM)}


def _is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def _check_not_squatted(target: Path) -> None:
    # A non-empty directory without the marker was not made by us (renames are all-or-nothing).
    if target.is_dir() and any(target.iterdir()):
        raise UserError(
            f"{target} exists but is not a complete built-in model (no {COMPLETE_MARKER}); delete it and rerun"
        )


def _remove_stale_builds(target: Path) -> None:
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass  # another process removed it first
