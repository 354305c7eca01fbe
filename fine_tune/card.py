"""Model cards (README.md) for the adapter, the merged model and the embedded base, as the Hub shows them.

Hub metadata (base model, library, pipeline, tags, datasets, license), then what a reader needs: the
prompt format, the training hyperparameters, the evaluation results from the run's reports, and a
snippet that loads the model. Everything comes from the config and the reports: rendering the same
run twice gives the same card, so pushing again changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from core.config import PROMPT_LEARNING_METHODS, Config
from core.prompts import render_completion, render_prompt
from core.runs import RunPaths

Kind = Literal["adapter", "merged", "base"]
EXAMPLE_QUESTION = "How do I reverse a list in Python?"


def base_hub_id(config: Config, model_repo: str | None) -> str | None:
    """Where a Hub user gets the base: model.name_or_path when it is a Hub id; the embedded base is pushed
    to <model_repo>-base. None when unknown (no repo yet, or a local folder that exists only here)."""
    name = config.model.name_or_path
    if name == "embedded":
        return f"{model_repo}-base" if model_repo else None
    return None if Path(name).exists() else name


def read_report(reports: Path, name: str) -> dict[str, Any]:
    path = reports / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def table(rows: dict[str, Any], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines)


METHOD_NAMES = {
    "lora": "LoRA", "dora": "DoRA (weight-decomposed LoRA)", "rslora": "rsLoRA (rank-stabilised LoRA)",
    "olora": "OLoRA (orthonormal initialisation, saved as LoRA)", "adalora": "AdaLoRA (adaptive rank)",
    "ia3": "IA3 (learned scaling vectors)", "prompt_tuning": "prompt tuning",
    "prefix_tuning": "prefix tuning", "p_tuning": "P-tuning (prompt encoder)",
}  # fmt: skip


def hyperparameters(config: Config) -> dict[str, Any]:
    quant = config.quant
    lora = config.lora
    quantization = {
        4: f"4-bit {quant.quant_type} (QLoRA), double quantization {quant.double_quant}, "
        f"compute dtype {quant.compute_dtype}",
        8: f"8-bit LLM.int8 (bitsandbytes), compute dtype {quant.compute_dtype}",
        16: f"none: LoRA on the unquantized base, compute dtype {quant.compute_dtype}",
    }
    targets = {
        "auto": "auto (PEFT's choice for the architecture)",
        "all-linear": "all-linear (every linear layer but the output head)",
    }
    peft = config.peft
    rows: dict[str, Any] = {
        "PEFT method": METHOD_NAMES[peft.method],
        "quantization": quantization[quant.bits],
    }
    if peft.method in PROMPT_LEARNING_METHODS:
        rows["virtual tokens"] = peft.num_virtual_tokens
    elif peft.method != "ia3":
        rows["LoRA"] = f"r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, bias {lora.bias}"
        rows["LoRA target modules"] = (
            targets[lora.target_modules]
            if isinstance(lora.target_modules, str)
            else ", ".join(lora.target_modules)
        )
    rows.update({name: value for name, value in config.train.model_dump().items() if name != "resume"})
    rows["seed"] = config.run.seed
    return rows


def evaluation(reports: Path, kind: Kind) -> list[str]:
    """The run's numbers: training and validation losses, base vs fine-tuned, and the merge check."""
    train = read_report(reports, "train_report.json")
    compare = read_report(reports, "compare.json").get("summary", {})
    merge = read_report(reports, "merge_check.json")
    lines = ["## Evaluation\n"]
    if not (train or compare or merge):
        return [*lines, "No evaluation report was found for this run.\n"]
    if train:
        keys = ["steps", "final_train_loss", "eval_loss", "tokens_per_second", "wall_seconds", "peak_rss_mb"]
        lines += [table({key: train[key] for key in keys if key in train}, ("training", "value")), ""]
    if compare:
        models = list(compare)
        metrics = [metric for metric in next(iter(compare.values())) if metric != "answers"]
        lines += [
            "Base vs fine-tuned on validation prompts (`make compare`):\n",
            "| metric | " + " | ".join(models) + " |",
            "| --- | " + " | ".join("---" for _ in models) + " |",
            *[
                f"| {metric} | " + " | ".join(str(compare[m].get(metric)) for m in models) + " |"
                for metric in metrics
            ],
            "",
        ]
    if merge and kind == "merged":
        verdict = "passed" if merge.get("passed") else "FAILED"
        lines.append(
            f"Merge self-check {verdict}: the merged weights' logits differ from base + adapter by at most "
            f"{merge.get('max_abs_logit_difference'):.3g} (tolerance {merge.get('tolerance')}, "
            f"{merge.get('dtype')}, {merge.get('tokens_compared')} tokens).\n"
        )
    return lines


def usage(kind: Kind, model_id: str, system_prompt: str | None) -> str:
    name = json.dumps(model_id)
    if kind == "adapter":
        loader = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            "# Loads the base named in adapter_config.json, then applies the adapter.",
            f"model = AutoPeftModelForCausalLM.from_pretrained({name})",
        ]
    else:
        loader = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"model = AutoModelForCausalLM.from_pretrained({name})",
        ]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = [*system, {"role": "user", "content": EXAMPLE_QUESTION}]
    code = [
        *loader,
        f"tokenizer = AutoTokenizer.from_pretrained({name})",
        "messages = [",
        *[f"    {json.dumps(message, ensure_ascii=False)}," for message in messages],
        "]",
        "inputs = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ")",
        "output = model.generate(**inputs, max_new_tokens=256)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
    ]
    return "```python\n" + "\n".join(code) + "\n```\n"


def summary(config: Config, kind: Kind, base_id: str | None) -> str:
    spec = config.model.embedded
    if kind == "base":
        return (
            "The small Llama-architecture base model this project builds offline (`make base`), "
            f"deterministically from seed {spec.seed}: hidden size {spec.hidden_size}, {spec.num_layers} "
            f"layers, {spec.num_heads} heads, a {spec.vocab_size}-token Llama-2-like tokenizer (BPE with "
            f"byte fallback), briefly pretrained ({spec.pretrain_steps} steps) on the Python standard "
            "library's own source. It is the base the run's adapter was trained on.\n"
        )
    if base_id:
        base = f"`{base_id}`"
    elif config.model.name_or_path == "embedded":
        base = "the embedded base model (`make base`)"
    else:
        base = f"`{config.model.name_or_path}`"
    method = METHOD_NAMES[config.peft.method]
    what = (
        f"{'An' if method[0] in 'AEIOU' else 'A'} {method} adapter"
        if kind == "adapter"
        else f"The {method} adapter merged into a {config.merge.dtype} copy of its unquantized base"
    )
    quantized = {4: ", 4-bit base (QLoRA)", 8: ", 8-bit base", 16: ""}[config.quant.bits]
    data = config.data.prompt_format
    return (
        f"{what}: supervised fine-tuning (TRL's `SFTTrainer`{quantized}) of {base} on {TRAINED_ON[data]} "
        f"(run `{config.run.name}`). {LOSS[data]}\n"
    )


TRAINED_ON = {
    "llama2": "Llama-2 chat prompts",
    "chat_template": "prompts in its own chat template",
    "firefly": "conversations in Firefly's format",
    "text": "plain text",
}
LOSS = dict.fromkeys(
    ["llama2", "chat_template", "firefly"],
    "The loss covered only the answers (every answer of a conversation) and the token that closes each.",
) | {"text": "The loss covered every token."}


def prompt_format(config: Config) -> list[str]:
    """The card's prompt format section."""
    if config.data.prompt_format == "text":
        return ["None: the model continues the text it is given, as it was trained on plain text.\n"]
    if config.data.prompt_format == "firefly":
        return [
            "Firefly's format, saved as the tokenizer's chat template; `<s>` and `</s>` are the tokenizer's "
            "BOS and EOS tokens, not text to type:\n",
            "```text\n<s>{question}</s>{answer}</s>{next question}</s>\n```\n",
        ]
    if config.data.prompt_format == "chat_template":
        return [
            "The base model's own chat template, saved with the tokenizer: `apply_chat_template` renders "
            "exactly what training saw. An answer ends with the tokenizer's EOS token.\n"
        ]
    prompt = (
        "<s>"
        + render_prompt("{question}", config.data.system_prompt)
        + render_completion("{answer}")
        + "</s>"
    )
    return [
        "Llama-2 chat; `<s>` and `</s>` are the tokenizer's BOS and EOS tokens, not text to type. "
        "The tokenizer's chat template renders exactly this.\n",
        f"```text\n{prompt}\n```\n",
    ]


def model_card(config: Config, kind: Kind, model_id: str, base_id: str | None, license_id: str | None) -> str:
    """README.md for `model_id` (a Hub id, or a local folder before any push)."""
    from huggingface_hub import ModelCardData

    trained = kind != "base"
    method_tags = ["qlora"] * (config.quant.bits == 4) + [config.peft.method.replace("_", "-")]
    tags = ["trl", "sft", *method_tags, "llama-2"] if trained else ["llama", "text-generation"]
    if kind == "merged":
        tags.append("merge")
    metadata = ModelCardData(
        base_model=base_id if trained else None,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        license=license_id,
        datasets=[config.hub.dataset_repo] if trained and config.hub.dataset_repo else None,
        tags=tags,
    )
    sections = [
        f"---\n{metadata.to_yaml()}\n---\n",
        f"# {model_id}\n",
        summary(config, kind, base_id),
        "## Prompt format\n",
        *prompt_format(config),
    ]
    if trained:
        sections += [
            "## Training hyperparameters\n",
            table(hyperparameters(config), ("setting", "value")) + "\n",
            *evaluation(RunPaths.of(config).reports, kind),
        ]
    sections += ["## Use\n", usage(kind, model_id, config.data.system_prompt)]
    return "\n".join(sections)
