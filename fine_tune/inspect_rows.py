"""`make inspect`: the training rows exactly as the trainer receives them, token by token, or a prompt's ids.

Each row of the training split tokenized as training tokenizes it (fine_tune/train.py's tokenized_rows: the
data's text stays text), after SFTTrainer's own preparation (packed into `train.max_length` bins or
truncated) and through its own collator: every token with its id, whether it is in
the loss, and where each packed example starts. `--format json` prints one object per row with the
collated `input_ids`, `labels` (-100 where a token is not in the loss) and `position_ids` (0 where an
example starts). `--prompt` shows instead the ids `make infer` sends for that prompt. It reads the curated
dataset and the run's tokenizer only: no model weights, seconds on the tiny profile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.model import base_tokenizer, prompt_ids
from core.patches import sft_collator, sft_training_rows
from core.runs import RunPaths, require
from fine_tune.train import sft_config, tokenized_rows

GREEN, DIM, BOLD, RESET = "\033[32m", "\033[2m", "\033[1m", "\033[0m"


def collated_rows(config: Config, indices: list[int] | None, count: int) -> Iterator[dict[str, Any]]:
    """The collated tensors of training rows `indices` (or the first `count`) as plain lists, with `row`."""
    from datasets import disable_caching, disable_progress_bars, load_from_disk

    disable_progress_bars()  # the rows are the output
    disable_caching()  # tokenized copies go to temporary files, never into the curated dataset's folder
    paths = RunPaths.of(config)
    require(paths.dataset / "data", "curated dataset", "make data")
    tokenizer = base_tokenizer(config)
    with tempfile.TemporaryDirectory() as scratch:  # SFTConfig wants an output folder; nothing is written
        args = sft_config(config, scratch)
    tokenized = tokenized_rows(load_from_disk(str(paths.dataset / "data")), tokenizer)
    rows = sft_training_rows(tokenized["train"], tokenizer, args)
    for index in indices if indices is not None else range(min(count, len(rows))):
        if not 0 <= index < len(rows):
            raise UserError(
                f"ROW={index}: there are {len(rows)} training rows after packing, 0 to {len(rows) - 1}"
            )
        batch = sft_collator(tokenizer, args)([rows[index]])
        # the per-token tensors (input_ids, labels, and attention_mask or position_ids), not packing's offsets
        tensors = {key: value[0].tolist() for key, value in batch.items() if getattr(value, "ndim", 0) == 2}
        yield {"row": index, "rows": len(rows), **tensors}


def shown_piece(tokenizer, token_id: int) -> str:
    """A token as the tokenizer names it, with line breaks and tabs visible."""
    return tokenizer.convert_ids_to_tokens(token_id).replace("\n", "\\n").replace("\t", "\\t")


def describe_row(tokenizer, row: dict[str, Any], colour: bool) -> str:
    """Each packed example of a row on its own lines: `piece:id`, the tokens in the loss in green (in a
    terminal) or [bracketed] (piped)."""
    ids, labels = row["input_ids"], row["labels"]
    positions = row.get("position_ids", list(range(len(ids))))
    starts = [index for index, position in enumerate(positions) if position == 0] + [len(ids)]
    in_loss = sum(label != -100 for label in labels)
    examples = len(starts) - 1
    lines = [
        f"row {row['row']} of {row['rows']}: {len(ids)} tokens, {examples} example(s), {in_loss} in the loss"
    ]
    for number, (start, end) in enumerate(itertools.pairwise(starts), 1):
        lines.append(
            f"{BOLD if colour else ''}-- example {number}: tokens {start}-{end - 1}{RESET if colour else ''}"
        )
        words = []
        for token_id, label in zip(ids[start:end], labels[start:end], strict=True):
            word = f"{shown_piece(tokenizer, token_id)}:{token_id}"
            if colour:
                words.append(f"{GREEN}{word}{RESET}" if label != -100 else f"{DIM}{word}{RESET}")
            else:
                words.append(f"[{word}]" if label != -100 else word)
        lines.append(" ".join(words))
    return "\n".join(lines)


def main(config: Config, args: argparse.Namespace) -> None:
    colour = sys.stdout.isatty()
    if args.prompt:
        tokenizer = base_tokenizer(config)
        from core.model import chat_format

        ids = prompt_ids(tokenizer, chat_format(tokenizer).prompt(args.prompt, config.data.system_prompt))
        if args.format == "json":
            print(json.dumps({"prompt": args.prompt, "input_ids": ids}))
        else:
            print(f"the {len(ids)} ids make infer sends for this prompt:")
            print(" ".join(f"{shown_piece(tokenizer, token_id)}:{token_id}" for token_id in ids))
        return
    indices = None if args.row is None else [args.row]
    tokenizer = base_tokenizer(config) if args.format == "text" else None
    for row in collated_rows(config, indices, args.rows):
        if args.format == "json":
            print(json.dumps(row))
        else:
            print(describe_row(tokenizer, row, colour) + "\n")
    if args.format == "text" and not colour:
        print("[piece:id] is in the loss; piece:id is context only (▁ is a space)")


def parse_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=parse_count, default=3, help="how many rows from the start (default 3)"
    )
    parser.add_argument("--row", type=parse_count, default=None, help="one row, by its index")
    parser.add_argument("--prompt", default="", help="show the ids make infer sends for this prompt instead")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    run_stage(main, parser)
