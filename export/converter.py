"""llama.cpp's convert_hf_to_gguf.py, run as it is but for one fix: the scores of a Llama tokenizer that
only has tokenizer.json. `python -m export.converter MODEL_FOLDER --outfile ... --outtype ...`.

Without tokenizer.model (transformers 5 saves a Llama tokenizer as tokenizer.json alone), the converter
reads the tokenizer with gguf-py's LlamaHfVocab, which gives every piece the placeholder score -1000.
llama.cpp's Llama (SentencePiece) tokenizer merges the adjacent pair whose piece scores highest, so with
equal scores it splits text unlike the tokenizer the model was trained with (export/check.py sees it).
Here each piece scores minus the rank of the first merge in tokenizer.json that makes it: the order of
SentencePiece's own scores, by which the merges of a Llama tokenizer.json are ranked.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

from export.gguf import CONVERTER


def merge_scores(tokenizer: dict[str, Any]) -> dict[int, float]:
    """Each piece's id -> minus the rank of the first merge that makes it (pieces no merge makes: none)."""
    vocab, scores = tokenizer["model"]["vocab"], {}
    for rank, merge in enumerate(tokenizer["model"].get("merges", [])):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        piece = vocab.get(left + right)
        if piece is not None:
            scores.setdefault(piece, -float(rank))
    return scores


def main(arguments: list[str]) -> None:
    sys.path[0:0] = [str(CONVERTER.parent), str(CONVERTER.parent / "gguf-py")]
    import gguf

    tokenizer_file = Path(arguments[0]) / "tokenizer.json"
    if tokenizer_file.is_file():
        scores = merge_scores(json.loads(tokenizer_file.read_text(encoding="utf-8")))
        gguf.LlamaHfVocab.get_token_score = lambda self, token_id: scores.get(token_id, 0.0)
    sys.argv = [str(CONVERTER), *arguments]
    runpy.run_path(str(CONVERTER), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
