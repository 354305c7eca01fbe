"""`make base`: build the embedded default base model, offline and deterministically from a seed.

A small Llama-architecture model with a Llama-2-like tokenizer (BPE with byte fallback, `<unk>` `<s>`
`</s>`, BOS added on encode, no pad token, the Llama-2 chat template), briefly pretrained on text
that ships with every Python (the language reference behind `help()` and the standard library's
source) so that "base" is a language model, not noise. The result is cached under
`model.embedded.cache_dir` by a hash of its spec and loads with the Auto classes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from core.cli import run_stage, stage_parser
from core.config import Config, EmbeddedBaseConfig
from core.model import embedded_base_dir
from core.prompts import LLAMA2_CHAT_TEMPLATE
from core.runs import atomic_dir
from core.syntax import parses

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
# Chunks the trainer learns pieces within: indentation (a run of spaces, less the one that opens the next
# word), a word with its opening space, a run of newlines. Indentation becomes a few tokens, not one per
# space.
PRE_TOKENIZER_PATTERN = r"▁+(?=▁)|▁?[^▁\n]+|▁+|\n+"
# Every 40th text of the corpus is kept out of training, and the base measured on (up to 64 blocks of) them.
HELD_OUT_EVERY = 40
HELD_OUT_BLOCKS = 64


def stdlib_corpus(megabytes: float) -> list[str]:
    """About `megabytes` of text every Python has: the language reference that `help()` shows (English
    prose about Python, its examples in Markdown code blocks as answers write them), then the standard
    library's .py files in sorted path order, less the codecs' character tables."""
    from pydoc_data.topics import topics

    texts = [fenced_examples(topics[name]) for name in sorted(topics)]
    budget = int(megabytes * 1_000_000) - sum(map(len, texts))
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if budget <= 0:
            break
        if {"site-packages", "test", "tests", "pydoc_data", "encodings"} & set(path.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        budget -= len(text)
    return texts


def fenced_examples(text: str) -> str:
    """`text` (the language reference as `help()` renders it) with each example, a block indented under a
    line that ends with a colon, as a Markdown code block: ```python when it parses as Python, else ```."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        index += 1
        opens_example = (
            line.endswith(":") and not line.startswith(" ") and index + 1 < len(lines)
            and not lines[index].strip() and lines[index + 1].startswith("   ") and lines[index + 1].strip()
        )  # fmt: skip
        if not opens_example:
            continue
        end = index + 1
        while end < len(lines) and (lines[end].startswith("   ") or not lines[end].strip()):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        code = textwrap.dedent("\n".join(lines[index + 1 : end]))
        out += ["", f"```{'python' if parses(code) else ''}", code, "```"]
        index = end
    return "\n".join(out)


def build_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-2-like tokenizer trained on `texts`: ids 0-2 special, 3-258 byte fallback, then BPE pieces."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERN), behavior="isolated")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        limit_alphabet=200,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    # Renumber so that the byte-fallback pieces sit right after the special tokens, as in Llama-2.
    state = json.loads(tokenizer.to_str())
    learned = sorted(state["model"]["vocab"].items(), key=lambda item: item[1])
    pieces = [piece for piece, _ in learned if piece not in SPECIAL_TOKENS and piece not in BYTE_TOKENS]
    ordered = SPECIAL_TOKENS + BYTE_TOKENS + pieces
    state["model"]["vocab"] = {piece: index for index, piece in enumerate(ordered)}
    state["model"]["merges"] = piece_merges(state["model"]["vocab"], state["model"]["merges"])
    # The pre-tokenizer only shaped what the trainer learned. Without it, and with every split of a piece
    # ranked by the piece, the tokenizer splits text as SentencePiece does (llama.cpp reads it so).
    state["pre_tokenizer"] = None
    tokenizer = Tokenizer.from_str(json.dumps(state))

    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=LLAMA2_CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def piece_merges(vocab: dict[str, int], trained: list) -> list[list[str]]:
    """Merges that make BPE split text as SentencePiece does: a pair of adjacent pieces merges when their
    concatenation is a piece, the best-ranked such piece first. A piece's rank is that of the first
    trained merge making it (the order its score has in llama.cpp's copy); every split of it into two
    pieces is a merge of that rank."""
    rank: dict[str, int] = {}
    for index, merge in enumerate(trained):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, index)
    merges = [
        (rank[piece], vocab[piece[:cut]], vocab[piece[cut:]], piece[:cut], piece[cut:])
        for piece in rank
        for cut in range(1, len(piece))
        if piece[:cut] in vocab and piece[cut:] in vocab
    ]
    return [[left, right] for *_, left, right in sorted(merges)]


def pretrain_blocks(tokenizer, texts: list[str], seq_len: int) -> list[list[int]]:
    """The corpus as one token stream (each file opened by BOS, closed by EOS), cut into equal blocks."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    return [stream[start : start + seq_len] for start in range(0, len(stream) - seq_len + 1, seq_len)]


def split_texts(texts: list[str]) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts): every `HELD_OUT_EVERY`-th text of the corpus is kept out of the
    tokenizer and of pretraining, to measure the base on text it never saw."""
    held_out = [text for index, text in enumerate(texts) if index % HELD_OUT_EVERY == 0]
    return [text for index, text in enumerate(texts) if index % HELD_OUT_EVERY], held_out


def held_out_blocks(tokenizer: Any, texts: list[str], seq_len: int) -> list[list[int]]:
    """The first `HELD_OUT_BLOCKS` blocks of the held-out texts."""
    return pretrain_blocks(tokenizer, texts, seq_len)[:HELD_OUT_BLOCKS]


def bits_per_byte(model: Any, tokenizer: Any, blocks: list[list[int]], batch_size: int = 8) -> float:
    """The model's loss on `blocks` in bits per byte of their text: unlike a loss per token, comparable
    between tokenizers of different vocabulary sizes."""
    import torch

    was_training = model.training
    model.eval()
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            ids = torch.tensor(blocks[start : start + batch_size])
            nats += model(input_ids=ids, labels=ids).loss.item() * ids.shape[0] * (ids.shape[1] - 1)
    model.train(was_training)
    text_bytes = sum(len(tokenizer.decode(block, skip_special_tokens=True).encode()) for block in blocks)
    return nats / math.log(2) / text_bytes


def untrained_model(spec: EmbeddedBaseConfig, tokenizer: Any) -> Any:
    """A randomly initialised Llama of the spec's shape for `tokenizer` (the seed set by the caller)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(model_config)


def pretrain(
    model: Any, blocks: list[list[int]], spec: EmbeddedBaseConfig, scratch: str, callbacks: list | None = None
) -> None:
    """`spec.pretrain_steps` steps of causal-LM training on `blocks` (shuffled, so that the steps see a sample
    of the whole corpus and not its first files; repeated when they need more), with a cosine schedule."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    blocks = list(blocks)
    random.Random(spec.seed).shuffle(blocks)
    needed = spec.pretrain_steps * spec.pretrain_batch_size
    blocks = (blocks * math.ceil(needed / len(blocks)))[:needed]
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    args = TrainingArguments(
        output_dir=scratch,
        max_steps=spec.pretrain_steps,
        per_device_train_batch_size=spec.pretrain_batch_size,
        learning_rate=spec.pretrain_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, spec.pretrain_steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, spec.pretrain_steps // 10),
        save_strategy="no",
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks).train()


def build_base(spec: EmbeddedBaseConfig, destination: Path) -> None:
    from transformers import GenerationConfig, set_seed

    set_seed(spec.seed)
    texts, held_out_texts = split_texts(stdlib_corpus(spec.corpus_megabytes))
    log.info(
        "corpus: %d texts, %.1f MB (and %d held out)",
        len(texts),
        sum(map(len, texts)) / 1e6,
        len(held_out_texts),
    )
    tokenizer = build_tokenizer(texts, spec.vocab_size)
    model = untrained_model(spec, tokenizer)
    log.info("model: %.2fM parameters", model.num_parameters() / 1e6)

    with atomic_dir(destination) as staging, tempfile.TemporaryDirectory() as scratch:
        if spec.pretrain_steps:
            held_out = held_out_blocks(tokenizer, held_out_texts, spec.pretrain_seq_len)
            started = time.perf_counter()
            pretrain(model, pretrain_blocks(tokenizer, texts, spec.pretrain_seq_len), spec, scratch)
            seconds = time.perf_counter() - started
            tokens = spec.pretrain_steps * spec.pretrain_batch_size * spec.pretrain_seq_len
            report = {
                "held_out_bits_per_byte": round(bits_per_byte(model, tokenizer, held_out), 4),
                "held_out_blocks": len(held_out),
                "pretrain_tokens": tokens,
                "pretrain_seconds": round(seconds, 1),
                "pretrain_tokens_per_second": round(tokens / seconds, 1),
            }
            log.info(
                "pretrained on %d tokens in %.0f s (%.0f tokens/s); held-out text: %.3f bits per byte",
                tokens, seconds, tokens / seconds, report["held_out_bits_per_byte"],
            )  # fmt: skip
            (staging / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "embedded_spec.json").write_text(spec.model_dump_json(indent=2) + "\n")


def main(config: Config, args: argparse.Namespace) -> None:
    if config.model.name_or_path != "embedded":
        log.info("model.name_or_path is %s: nothing to build", config.model.name_or_path)
        return
    destination = embedded_base_dir(config.model.embedded)
    if (destination / "config.json").is_file() and not args.rebuild:
        log.info("embedded base already built: %s", destination)
        return
    build_base(config.model.embedded, destination)
    log.info("embedded base built: %s", destination)


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    run_stage(main, parser)
