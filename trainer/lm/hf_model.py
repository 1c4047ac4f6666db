"""Any `transformers` causal LM of a supported family at a TransformerLens-style hook point.

Hook names map onto the model's own modules, reached by forward hooks (nothing is copied or
converted): for block i,

    blocks.{i}.hook_resid_pre   the block's input (the residual stream before it)
    blocks.{i}.attn.hook_z      the input of the attention output projection: every head's
                                weighted values, concatenated [.., n_heads * d_head]
    blocks.{i}.mlp.hook_post    the input of the MLP output projection: the neurons after the
                                nonlinearity (after the gating, for Llama's gated MLP)
    blocks.{i}.hook_resid_post  the block's output

The tokenizer is the model's own (its folder must hold one). `transformers` is imported only
here, and only when a run names a model.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.extras import require_extra
from trainer.lm.hooks import HookError, Replacement, cross_entropy


@dataclass(frozen=True)
class Family:
    """Where a family keeps its blocks and the modules the hooks attach to (dotted paths)."""

    blocks: str  # the list of blocks, from the model
    attn_out: str  # attention output projection, from a block
    mlp_out: str  # MLP output projection, from a block
    final_norm: str  # the norm before the unembedding, from the model


FAMILIES: dict[str, Family] = {
    "gpt2": Family("transformer.h", "attn.c_proj", "mlp.c_proj", "transformer.ln_f"),
    "gpt_neox": Family(
        "gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm"
    ),
    "llama": Family("model.layers", "self_attn.o_proj", "mlp.down_proj", "model.norm"),
}

HOOK_PATTERN = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|attn\.hook_z|mlp\.hook_post)")
HOOK_KINDS = ("hook_resid_pre", "attn.hook_z", "mlp.hook_post", "hook_resid_post")

NOTES = {
    "resid": "Direct-path approximation: this direction of the residual stream read straight through "
    "the final norm's scale and the unembedding, as if no later block changed it.",
    "attn.hook_z": "Direct-path approximation: through the attention output projection, the final "
    "norm's scale and the unembedding, as if no later block changed what this layer writes.",
    "mlp.hook_post": "Direct-path approximation: through the MLP's output projection, the final norm's "
    "scale and the unembedding, as if no later block changed what this layer writes.",
}


def _transformers() -> Any:
    """The transformers package (the `hf` extra), or MissingExtra naming it."""
    return require_extra("transformers", "hf", "a transformers model (--model, or a run made with one)")


class _Stop(Exception):
    """Raised by a hook once it has what it came for, to skip the rest of the forward pass."""


# ---------------------------------------------------------------------------- names and checks


def hook_names(model_type: str, n_layers: int) -> list[str]:
    return [f"blocks.{i}.{kind}" for i in range(n_layers) for kind in HOOK_KINDS]


def _n_layers(config: Any) -> int:
    for name in ("num_hidden_layers", "n_layer"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ValueError(f"cannot tell how many layers a {config.model_type} model has")


def _family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported families: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def parse_hook(hook: str, model_type: str, n_layers: int) -> tuple[int, str]:
    """(layer, kind) of a hook name, or a HookError listing every valid name on one line."""
    match = HOOK_PATTERN.fullmatch(hook)
    if match is None or int(match.group(1)) >= n_layers:
        raise HookError(
            f"hook {hook!r} does not exist in this {model_type} model ({n_layers} layers); "
            f"valid hooks: {', '.join(hook_names(model_type, n_layers))}"
        )
    return int(match.group(1)), match.group(2)


def load_config(path_or_id: str) -> Any:
    transformers = _transformers()
    try:
        return transformers.AutoConfig.from_pretrained(path_or_id)  # nosec B615  # the user's own model; a revision is theirs to pin
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path_or_id} is not a transformers model folder (or hub id) with a config.json: {exc}"
        ) from exc


def load_tokenizer(path_or_id: str) -> Any:
    """The model's own fast tokenizer, or a ValueError saying the folder has none."""
    auto_tokenizer = _transformers().AutoTokenizer

    def missing(detail: str) -> ValueError:
        return ValueError(
            f"{path_or_id} has no usable tokenizer ({detail}); save the model's tokenizer beside it "
            "with tokenizer.save_pretrained(folder)"
        )

    folder = Path(path_or_id)
    if folder.is_dir() and not any(
        (folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        raise missing("no tokenizer.json, tokenizer_config.json or vocab.json in the folder")
    try:
        tokenizer = auto_tokenizer.from_pretrained(path_or_id)  # nosec B615  # the user's own model; a revision is theirs to pin
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError, ... here
        raise missing(f"{type(exc).__name__}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise missing("only a slow tokenizer; a tokenizer.json is needed")
    return tokenizer


def preflight(path_or_id: str, hook: str | None, need_hook: bool = True) -> None:
    """Check the model's config, hook name and tokenizer without loading the weights, so that a
    bad flag is refused before anything is written."""
    config = load_config(path_or_id)
    _family(config.model_type)
    n_layers = _n_layers(config)
    if hook is None and need_hook:
        raise HookError(
            f"--hook is required with --model; valid hooks: {', '.join(hook_names(config.model_type, n_layers))}"
        )
    if hook is not None:
        parse_hook(hook, config.model_type, n_layers)
    load_tokenizer(path_or_id)


def bf16_supported(device: str) -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class TokenizerInfo:
    """What the corpus and analysis stages need of a model's tokenizer."""

    backend: Any  # tokenizers.Tokenizer
    eot_id: int  # document separator: the model's end-of-sequence token
    vocab_size: int  # ids the tokenizer can produce


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    if eot is None:
        raise ValueError("the model's tokenizer has neither an end- nor a beginning-of-sequence token")
    return TokenizerInfo(tokenizer.backend_tokenizer, int(eot), len(tokenizer))


def token_bytes(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """The bytes of every token id up to the model's vocabulary size: byte-level BPE pieces (GPT-2,
    NeoX) through GPT-2's byte map, SentencePiece pieces (Llama) with '▁' as a space and <0xNN>
    as that byte; special tokens as their text; ids past the tokenizer as '<unused N>'."""
    from trainer.corpus.tokenizer import _bytes_to_unicode

    serialized = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = '"ByteLevel"' in json.dumps([serialized.get("pre_tokenizer"), serialized.get("decoder")])
    byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    out: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        piece = piece or ""
        if token_id in special:
            out.append(piece.encode("utf-8"))
        elif byte_level and all(ch in byte_decoder for ch in piece):
            out.append(bytes(byte_decoder[ch] for ch in piece))
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    out.extend(f"<unused {i}>".encode() for i in range(len(out), vocab_size))
    return out


# ---------------------------------------------------------------------------- the model


def _get(root: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        root = root[int(name)] if name.isdigit() else getattr(root, name)
    return root


def _linear_in_out(module: torch.nn.Module) -> torch.Tensor:
    """A projection's weight as [in, out]: nn.Linear stores [out, in], GPT-2's Conv1D [in, out]."""
    weight = module.get_parameter("weight").detach()
    return weight.T if isinstance(module, torch.nn.Linear) else weight


def _first_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


class HFHookedLM:
    """A transformers causal LM behind the HookedLM interface, at one hook point."""

    def __init__(self, model: Any, hook: str, n_ctx: int, compute_dtype: str = "fp32") -> None:
        config = model.config
        self.module = model
        self.model_type = config.model_type
        self.family = _family(self.model_type)
        n_layers = _n_layers(config)
        self.hook = hook
        self.layer, self.kind = parse_hook(hook, self.model_type, n_layers)
        max_positions = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.n_ctx = min(n_ctx, int(max_positions)) if max_positions else n_ctx
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.compute_dtype = compute_dtype
        block = _get(model, f"{self.family.blocks}.{self.layer}")
        if self.kind == "mlp.hook_post":
            self._target, self._at_input = _get(block, self.family.mlp_out), True
            self.d_in = int(_linear_in_out(self._target).shape[0])
        elif self.kind == "attn.hook_z":
            self._target, self._at_input = _get(block, self.family.attn_out), True
            self.d_in = int(_linear_in_out(self._target).shape[0])
        else:
            self._target, self._at_input = block, self.kind == "hook_resid_pre"
            self.d_in = int(model.get_output_embeddings().weight.shape[1])
        self.logit_effects_note = NOTES["resid" if self.kind.startswith("hook_resid") else self.kind]

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @contextlib.contextmanager
    def _hooked(self, on_activations: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """Call on_activations(x) at the hook; a tensor it returns replaces x downstream."""
        if self._at_input:

            def pre_hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                x = args[0] if args else kwargs["hidden_states"]
                new = on_activations(x)
                if new is None:
                    return None
                new = new.to(x.dtype).contiguous()  # GPT-2's Conv1D views its input
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

            handle = self._target.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def post_hook(_module: Any, _args: Any, output: Any) -> Any:
                x = _first_tensor(output)
                new = on_activations(x)
                if new is None:
                    return None
                new = new.to(x.dtype).contiguous()  # GPT-2's Conv1D views its input
                return new if isinstance(output, torch.Tensor) else (new, *output[1:])

            handle = self._target.register_forward_hook(post_hook)
        try:
            yield
        finally:
            handle.remove()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.compute_dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def activations(self, idx: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def grab(x: torch.Tensor) -> None:
            captured.append(x)
            raise _Stop

        with self._hooked(grab), self._autocast(), contextlib.suppress(_Stop):
            self.module(input_ids=idx.to(self.device), use_cache=False)
        return captured[0]

    @torch.no_grad()
    def run(
        self, idx: torch.Tensor, targets: torch.Tensor, replacement: Replacement | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def splice(x: torch.Tensor) -> torch.Tensor | None:
            captured.append(x)
            return replacement(x) if replacement is not None else None

        with self._hooked(splice):
            logits = self.module(input_ids=idx.to(self.device), use_cache=False).logits
        return cross_entropy(logits, targets.to(logits.device)), captured[0]

    @torch.no_grad()
    def logits(self, idx: torch.Tensor, replacement: Replacement | None = None) -> torch.Tensor:
        hooked = self._hooked(replacement) if replacement is not None else contextlib.nullcontext()
        with hooked:
            return self.module(input_ids=idx.to(self.device), use_cache=False).logits

    def _unembed(self) -> torch.Tensor:
        """[d_model, vocab]: the unembedding with the final norm's scale folded in."""
        norm = _get(self.module, self.family.final_norm)
        unembed = self.module.get_output_embeddings().weight.detach().float().T
        return unembed * norm.weight.detach().float()[:, None]

    def logit_weights(self) -> torch.Tensor:
        if self.kind.startswith("hook_resid"):
            return self._unembed()
        return _linear_in_out(self._target).float() @ self._unembed()

    def neuron_vectors(self) -> torch.Tensor | None:
        return _linear_in_out(self._target).float() if self.kind == "mlp.hook_post" else None


def load_hooked(path_or_id: str, hook: str, n_ctx: int, device: str = "cpu") -> HFHookedLM:
    """Load a causal LM (fp32 weights; bf16 compute where the hardware has it) at `hook`."""
    _transformers()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    config = load_config(path_or_id)
    _family(config.model_type)
    parse_hook(hook, config.model_type, _n_layers(config))
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path_or_id)  # nosec B615  # the user's own model; a revision is theirs to pin
    model = model.float().to(device).eval()
    return HFHookedLM(model, hook, n_ctx, "bf16" if bf16_supported(device) else "fp32")
