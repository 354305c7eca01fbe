"""The one description of a run: a pydantic model loaded from a YAML profile plus `--set` overrides."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import UserError, shortened

DEFAULT_SYSTEM_PROMPT = (
    "Given a puzzle-like code question, provide a well-reasoned, step-by-step Python solution."
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbeddedBaseConfig(Section):
    """The small Llama-architecture base built offline by `make base` (`model.name_or_path: embedded`)."""

    vocab_size: int = Field(4096, ge=512)
    hidden_size: int = Field(256, ge=64)
    intermediate_size: int = Field(704, ge=64)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(1024, ge=64)
    pretrain_steps: int = Field(600, ge=0)
    pretrain_batch_size: int = Field(4, ge=1)
    pretrain_seq_len: int = Field(256, ge=16)
    pretrain_learning_rate: float = Field(3e-3, gt=0)
    corpus_megabytes: float = Field(
        4.0, gt=0, description="text shipped with Python, for the tokenizer and pretraining"
    )
    seed: int = 1234
    cache_dir: Path = Path(".cache/base")

    @field_validator("hidden_size", "intermediate_size")
    @classmethod
    def _fits_the_4bit_cpu_kernels(cls, value: int) -> int:
        # Every quantized layer reads one of these sizes and writes one: bitsandbytes' 4-bit kernel for CPUs
        # with AVX-512 BF16 needs inputs in whole 64-value blocks (and outputs in rows of 32).
        if value % 64:
            below, above = value // 64 * 64, (value // 64 + 1) * 64
            raise ValueError(
                f"{value} is not a multiple of 64, which bitsandbytes' 4-bit CPU kernel (AVX-512 BF16) needs "
                f"of every layer size: use {below} or {above}"
            )
        return value

    @model_validator(mode="after")
    def _whole_heads(self) -> EmbeddedBaseConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}")
        return self


class ModelConfig(Section):
    name_or_path: str = Field("embedded", description="'embedded', a local folder or a Hub model id")
    revision: str | None = None
    embedded: EmbeddedBaseConfig = EmbeddedBaseConfig()


class StackOverflowSource(Section):
    questions: Path
    answers: Path
    tags: Path | None = None
    encoding: str = Field("auto", description="auto: UTF-8, with cp1252 for any bytes that are not UTF-8")
    min_question_score: int = 0
    min_answer_score: int = 0
    include_tags: list[str] = Field([], description="keep only questions with one of these tags")
    exclude_tags: list[str] = Field([], description="drop questions with any of these tags")
    limit: int | None = Field(None, ge=1, description="a seeded sample of at most this many pairs")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}: auto, or a Python codec name") from None
        return value


class AlpacaSource(Section):
    path: Path
    limit: int | None = Field(None, ge=1)


class ConversationSource(Section):
    """Multi-turn conversations (docs/conversations.md): `messages` (OpenAI/TRL JSONL), `sharegpt` (JSON or
    JSONL) or `moss` (Firefly's MOSS records). Each becomes one training row with every answer in the loss."""

    path: Path
    format: Literal["messages", "sharegpt", "moss"]
    limit: int | None = Field(None, ge=1)


class TextSource(Section):
    """Plain text: a .txt file (documents separated by a blank line) or JSONL with a `text` field; the loss
    on every token, documents packed into rows of train.max_length."""

    path: Path
    limit: int | None = Field(None, ge=1)


class DataConfig(Section):
    stackoverflow: StackOverflowSource | None = None
    alpaca: AlpacaSource | None = None
    conversations: list[ConversationSource] = []
    text: list[TextSource] = []
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    prompt_format: Literal["llama2", "chat_template", "firefly", "text"] = Field(
        "llama2",
        description="llama2: Meta's [INST] <<SYS>> format; chat_template: the base tokenizer's own "
        "(Llama-3); firefly: <s>{input}</s>{target}</s>; text: none, the model continues text (data.text)",
    )
    validation_size: int = Field(1000, ge=1)
    too_long: Literal["drop", "truncate"] = Field(
        "drop",
        description="examples longer than train.max_length tokens: drop them, or let training truncate",
    )
    require_code_block: bool = Field(False, description="keep only answers with a fenced code block")
    num_proc: int | None = Field(
        None, ge=1, description="processes converting HTML and counting tokens; default: every core"
    )

    @model_validator(mode="after")
    def _needs_a_source(self) -> DataConfig:
        if self.stackoverflow is None and self.alpaca is None and not self.conversations and not self.text:
            raise ValueError(
                "configure at least one source: data.stackoverflow, data.alpaca, data.conversations or "
                "data.text"
            )
        return self

    @model_validator(mode="after")
    def _the_format_fits_the_sources(self) -> DataConfig:
        asks = self.stackoverflow is not None or self.alpaca is not None or bool(self.conversations)
        if self.prompt_format == "text" and asks:
            raise ValueError(
                "prompt_format text has no prompts: it takes data.text sources only (questions and "
                "conversations need a chat format: llama2, chat_template or firefly)"
            )
        if self.prompt_format in {"text", "firefly"} and self.system_prompt and self.system_prompt.strip():
            raise ValueError(
                f"prompt_format {self.prompt_format} has no system prompt: set data.system_prompt: null"
            )
        return self


class QuantConfig(Section):
    bits: Literal[4, 8, 16] = Field(
        4,
        description="the base's weights in training: 4 = QLoRA (quant_type, double_quant, quant_storage), "
        "8 = LoRA on bitsandbytes' LLM.int8, 16 = LoRA on the unquantized base in the compute dtype",
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="bits 4 only")
    double_quant: bool = Field(True, description="bits 4 only")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="auto: bf16 on GPUs that support it, else fp16; float32 on CPU",
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="dtype the 4-bit weights are stored in; FSDP needs the compute dtype"
    )


class LoraConfig(Section):
    r: int = Field(64, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] | Literal["auto", "all-linear"] = Field(
        "auto",
        description="module names; all-linear: every linear layer but the output head; auto: PEFT's choice "
        "for the architecture (Llama: q_proj, v_proj; GPT-NeoX, Bloom, Falcon: query_key_value), all-linear "
        "where PEFT has none",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names_or_keyword(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in {"auto", "all-linear"}:
            raise ValueError(
                f"{value!r} is not a list of module names ([q_proj, v_proj]), auto or all-linear"
            )
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or auto or all-linear")
        return value


PROMPT_LEARNING_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")
# The peft settings that belong to some methods only: another method refuses them.
METHOD_SETTINGS = {
    "num_virtual_tokens": PROMPT_LEARNING_METHODS,
    "prompt_init_text": ("prompt_tuning",),
    "encoder_hidden_size": ("p_tuning",),
    "init_r": ("adalora",),
}


class PeftConfig(Section):
    """`peft.method`: the parameter-efficient method training uses (docs/peft-methods.md). The LoRA family
    (lora, dora, rslora, olora, adalora) reads `lora:` (for adalora, lora.r is the rank it prunes to); ia3
    scales PEFT's default modules of the architecture; the prompt-learning methods learn virtual tokens and
    change no layer of the base, so they cannot be merged."""

    method: Literal[
        "lora", "dora", "rslora", "olora", "adalora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"
    ] = "lora"  # fmt: skip
    num_virtual_tokens: int = Field(
        20, ge=1, description="prompt_tuning, prefix_tuning, p_tuning: tokens learned"
    )
    prompt_init_text: str | None = Field(
        None,
        min_length=1,
        description="prompt_tuning: start the virtual tokens from this text (default random)",
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="p_tuning: the prompt encoder's width (default the model's hidden size)"
    )
    init_r: int | None = Field(
        None,
        ge=1,
        description="adalora: the rank every matrix starts at, pruned to lora.r (default 1.5 x lora.r)",
    )

    @model_validator(mode="after")
    def _settings_of_the_method(self) -> PeftConfig:
        for name in sorted(self.model_fields_set):
            owners = METHOD_SETTINGS.get(name)
            if owners and self.method not in owners:
                raise ValueError(f"{name} is a setting of {', '.join(owners)}, not of method {self.method}")
        return self


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: run the epochs")
    batch_size: int = Field(4, ge=1)
    eval_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.001, ge=0)
    max_grad_norm: float = Field(0.3, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    optim: str = "paged_adamw_32bit"
    max_length: int = Field(512, ge=16)
    packing: bool = Field(False, description="several examples per row, isolated from each other")
    completion_only_loss: bool = Field(True, description="loss on the answer and its EOS, not the prompt")
    group_by_length: bool = False
    gradient_checkpointing: bool = True
    logging_steps: int = Field(5, ge=1)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    early_stopping_patience: int | None = Field(4, ge=1, description="needs load_best_model_at_end")
    load_best_model_at_end: bool = True
    resume: str = Field(
        "auto", description="auto: the newest checkpoint of the run; never; or a checkpoint path"
    )


SHARD_SIZE = r"^\d+(KB|KiB|MB|MiB|GB|GiB)$"


class MergeConfig(Section):
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="the unquantized base and the merged weights; float32 only where a CPU needs it",
    )
    max_shard_size: str = Field("2GB", pattern=SHARD_SIZE, description="largest safetensors shard, e.g. 2GB")


# A Hub repo id as `make push HUB_REPO=...` takes it: namespace/name, each part at most 96 characters
# (the Hub's limit), of letters, digits, `-`, `_` and `.`, the namespace opening with a letter or digit.
HUB_REPO_ID = r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$"
# A run's folder name (RunConfig also refuses `.` and `..`, which would leave run.output_dir).
RUN_NAME = r"^[A-Za-z0-9._-]+$"
# What each pattern means, for the one-line error a user sees instead of the regular expression.
PATTERN_MEANINGS = {
    HUB_REPO_ID: "a Hub repo id, namespace/name: letters, digits, '-', '_' and '.', at most 96 characters "
    "each side of the '/', the namespace starting with a letter or digit",
    RUN_NAME: "a folder name of letters, digits, '.', '_' and '-', not '.' or '..'",
    SHARD_SIZE: "a size such as 2GB or 500MB: a whole number, then KB, KiB, MB, MiB, GB or GiB",
}
# Fields that were renamed: the one line a profile written for the old name gets.
RENAMED_FIELDS = {
    "quant.load_in_4bit": "quant.bits: 4 | 8 | 16 (load_in_4bit true was bits 4, false bits 16)",
    "inference.load_in_4bit": "inference.quantize: true | false (it quantizes as quant.bits says)",
}


class HubConfig(Section):
    model_repo: str | None = Field(
        None,
        pattern=HUB_REPO_ID,
        description="user/name for the adapter; the merged model goes to <model_repo>-merged and, for the "
        "embedded base, the base to <model_repo>-base",
    )
    dataset_repo: str | None = Field(None, pattern=HUB_REPO_ID, description="user/name for `make push-data`")
    private: bool = True
    push_merged: bool = False
    push_gguf: bool = Field(False, description="also push runs/<run>/gguf (make export) to <model_repo>-gguf")
    revision: str | None = Field(None, description="a branch to push to (created if missing); default main")


class InferenceConfig(Section):
    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    quantize: bool = Field(
        False, description="load quantized as quant.bits (4 or 8) and quant.* say: a big model, a small GPU"
    )
    compare_examples: int = Field(32, ge=1, description="validation examples answered by make compare")
    compare_prompts: Path | None = Field(
        Path("data/compare_prompts.jsonl"),
        description="hand-written prompts make compare also answers (JSONL: prompt, system, reference)",
    )


class ServeConfig(Section):
    """`make serve`: the run's GGUF files behind an OpenAI-compatible API (llama.cpp). The API key is never a
    config value (a profile is committed): clients must send SERVE_API_KEY when it is set, and it must be set
    when `host` is not a loopback address."""

    host: str = Field("127.0.0.1", min_length=1, description="the address to listen on; HOST= overrides")
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port; PORT= overrides")
    quantization: Literal["16-bit", "Q8_0", "Q4_K_M"] = Field(
        "Q4_K_M", description="which of make export's files is served (Q4_K_M, as the Ollama Modelfile)"
    )
    context: int | None = Field(None, ge=32, description="tokens of context; default the model's own")
    threads: int | None = Field(
        None, ge=1, description="llama.cpp's threads per answer; default half the CPUs (docs/inference.md)"
    )
    log_prompt_ids: bool = Field(
        False, description="write the ids each request fed the model into runs/<run>/logs/serve.jsonl"
    )


class EvalConfig(Section):
    """`make eval`: problems answered by the base and the fine-tuned model, each answer's code run in a
    sandbox against the problem's tests."""

    problems: Path | None = Field(
        None, description="a JSONL file of problems in HumanEval's shape; default: HumanEval's 164"
    )
    limit: int | None = Field(None, ge=1, description="only the first N problems: a quick check")
    styles: list[Literal["instruct", "completion"]] = Field(
        ["instruct", "completion"],
        min_length=1,
        description="instruct: the problem asked in the chat format; completion: the function continued",
    )
    max_new_tokens: int = Field(384, ge=1)
    samples: int = Field(1, ge=1, description="answers per problem: 1 is greedy; more are sampled (pass@k)")
    pass_at: list[int] = Field([1], min_length=1, description="the k of each pass@k reported; k <= samples")
    temperature: float = Field(0.8, gt=0, description="when sampling (samples > 1)")
    top_p: float = Field(0.95, gt=0, le=1)
    timeout_seconds: float = Field(10.0, gt=0, description="wall-clock limit of one program")
    memory_mb: int = Field(1024, ge=64, description="address-space limit of one program")
    ngram: int = Field(13, ge=4, description="the n of the n-gram contamination check")
    with_compare: bool = Field(True, description="make compare (and so make all) runs the evaluation too")

    @model_validator(mode="after")
    def _k_within_samples(self) -> EvalConfig:
        too_big = [k for k in self.pass_at if k > self.samples or k < 1]
        if too_big:
            raise ValueError(f"pass_at {too_big} needs 1 <= k <= samples ({self.samples})")
        return self


class RunConfig(Section):
    name: str = Field("tiny", pattern=RUN_NAME, description="a folder name under run.output_dir")
    output_dir: Path = Path("runs")
    seed: int = 42

    @field_validator("name")
    @classmethod
    def _stays_inside_output_dir(cls, value: str) -> str:
        if value in {".", ".."}:
            raise ValueError(f"{value!r} would leave run.output_dir: give the run a name")
        return value


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig
    quant: QuantConfig = QuantConfig()
    lora: LoraConfig = LoraConfig()
    peft: PeftConfig = PeftConfig()
    train: TrainConfig = TrainConfig()
    merge: MergeConfig = MergeConfig()
    hub: HubConfig = HubConfig()
    inference: InferenceConfig = InferenceConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _a_method_peft_runs_with_these_settings(self) -> Config:
        """The combinations PEFT (0.21) cannot train or the pipeline cannot use, refused before loading."""
        method = self.peft.method
        if method == "dora" and self.quant.bits == 8:
            raise ValueError(
                "peft.method dora fails on bitsandbytes' 8-bit layers (PEFT 0.21): use quant.bits 4 or 16"
            )
        if method == "prefix_tuning" and self.train.gradient_checkpointing:
            raise ValueError(
                "peft.method prefix_tuning does not work with gradient checkpointing (PEFT refuses it): set "
                "train.gradient_checkpointing=false"
            )
        if method in PROMPT_LEARNING_METHODS and self.train.packing:
            raise ValueError(
                f"peft.method {method} puts its virtual tokens before each row, and train.packing puts "
                "several examples in one row (only the first would see them): set train.packing=false"
            )
        if method in PROMPT_LEARNING_METHODS and self.hub.push_merged:
            raise ValueError(
                f"hub.push_merged: a {method} adapter cannot be merged into the base; set "
                "hub.push_merged=false (make push uploads the adapter, which loads on its base)"
            )
        return self

    @model_validator(mode="after")
    def _plain_text_is_packed(self) -> Config:
        if self.data.text and not self.train.packing:
            raise ValueError(
                "data.text documents are packed into rows of train.max_length tokens (the longer ones split "
                "across rows): set train.packing=true"
            )
        return self

    @model_validator(mode="after")
    def _something_to_quantize_with(self) -> Config:
        if self.inference.quantize and self.quant.bits == 16:
            raise ValueError(
                "inference.quantize loads the model as quant.bits says, and quant.bits is 16: set quant.bits "
                "to 4 or 8, or inference.quantize to false"
            )
        return self


def parse_value(raw: str) -> Any:
    """An override's value read as YAML (numbers, booleans, null, `[a, b]` lists), except where YAML would
    change text a user meant literally: text with a line break, a leading `#` (a YAML comment), a `key: value`
    shape (a YAML mapping), unquoted text, and anything YAML cannot parse are kept as typed."""
    text = raw.strip()
    if not text:
        return ""
    if "\n" in raw or text.startswith("#"):
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, dict) and not text.startswith("{"):
        return raw
    if isinstance(value, str) and not text.startswith(("'", '"')):
        return text  # as typed: YAML would drop a ` #...` tail as a comment
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value), the value as `parse_value` reads it."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"bad override {text!r}: expected section.field=value")
    return key.strip().split("."), parse_value(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Pure: a copy of the raw profile with each `a.b=value` set, creating sections as needed."""
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"bad override {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `loc`'s parent, to name them in an error."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line naming every bad field and what is allowed."""
    problems = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden" and field in RENAMED_FIELDS:
            problems.append(f"{field} is now {RENAMED_FIELDS[field]}")
        elif item["type"] == "extra_forbidden":
            allowed = _allowed_fields(Config, item["loc"])
            problems.append(f"{field}: unknown field (allowed: {', '.join(allowed)})")
        elif item["type"] == "string_pattern_mismatch":
            pattern = item["ctx"]["pattern"]
            meaning = PATTERN_MEANINGS.get(pattern, f"text matching {pattern}")
            problems.append(f"{field}: {shortened(str(item['input']))!r} is not {meaning}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message}" if item["loc"] else message)
    return f"config error in {source}: " + "; ".join(problems)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise UserError(f"config file {path} is not UTF-8 text (line {line}): save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise UserError(describe_validation_error(error, str(path))) from None
