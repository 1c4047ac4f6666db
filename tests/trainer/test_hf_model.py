"""Hook points on tiny random GPT-2, GPT-NeoX and Llama models, checked against what transformers
itself computes (hidden states, its own loss, the MLP module's output)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hfdata import FAMILIES, N_LAYERS, build_model

from trainer.lm.hf_model import FAMILIES as LAYOUTS
from trainer.lm.hf_model import (
    HFHookedLM,
    hook_names,
    load_hooked,
    load_tokenizer,
    token_bytes,
    tokenizer_info,
)
from trainer.lm.hooks import HookError


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {family: build_model(family, root / family) for family in FAMILIES}


def hooked(folder: Path, hook: str) -> HFHookedLM:
    lm = load_hooked(str(folder), hook, n_ctx=64)
    lm.compute_dtype = "fp32"  # exact comparisons
    return lm


def ids(folder: Path, text: str = "The cat sat on the mat because 東京 and 42 = 1999.") -> torch.Tensor:
    info = tokenizer_info(load_tokenizer(str(folder)))
    return torch.tensor([info.backend.encode(text, add_special_tokens=False).ids] * 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_hooks_are_the_models_hidden_states(model_dirs: dict[str, Path], family: str) -> None:
    """hook_resid_pre of block i is transformers' hidden_states[i]; hook_resid_post of block i
    (before the last, whose output the final norm changes) is hidden_states[i + 1]."""
    idx = ids(model_dirs[family])
    lm = hooked(model_dirs[family], "blocks.0.hook_resid_pre")
    with torch.no_grad():
        states = lm.module(input_ids=idx, output_hidden_states=True).hidden_states
    for layer in range(N_LAYERS):
        pre = hooked(model_dirs[family], f"blocks.{layer}.hook_resid_pre").activations(idx)
        torch.testing.assert_close(pre, states[layer])
    post = hooked(model_dirs[family], "blocks.0.hook_resid_post").activations(idx)
    torch.testing.assert_close(post, states[1])
    assert not torch.allclose(states[0], states[1])  # the hooks are not all reading one tensor


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_and_attention_hooks_feed_their_output_projections(
    model_dirs: dict[str, Path], family: str
) -> None:
    """The MLP module's output is its output projection applied to hook_post (so hook_post is the
    neurons, gated for Llama); hook_z is [.., n_heads * d_head], what the attention projects out."""
    folder, layout = model_dirs[family], LAYOUTS[family]
    idx = ids(folder)
    lm = hooked(folder, "blocks.1.mlp.hook_post")
    block = lm.module.get_submodule(f"{layout.blocks}.1")
    mlp = block.get_submodule(layout.mlp_out.split(".")[0])
    outputs: list[torch.Tensor] = []
    handle = mlp.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        post = lm.activations(idx)  # stops at the hook: the MLP never finishes
        assert outputs == []
        lm.run(idx[:, :-1], idx[:, 1:])
    finally:
        handle.remove()
    projection = block.get_submodule(layout.mlp_out)
    torch.testing.assert_close(projection(post[:, :-1].contiguous()), outputs[0])
    assert post.shape[-1] == lm.d_in == lm.neuron_vectors().shape[0] > lm.module.config.hidden_size
    z = hooked(folder, "blocks.0.attn.hook_z")
    assert z.activations(idx).shape[-1] == z.d_in and z.neuron_vectors() is None


@pytest.mark.parametrize("family", FAMILIES)
def test_splicing_at_the_hook(model_dirs: dict[str, Path], family: str) -> None:
    """The clean loss is transformers' own; the identity splice keeps it; zeros change it."""
    idx = ids(model_dirs[family])
    for hook in ("blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_z"):
        lm = hooked(model_dirs[family], hook)
        clean, acts = lm.run(idx[:, :-1], idx[:, 1:])
        with torch.no_grad():
            reference = lm.module(input_ids=idx, labels=idx).loss
        torch.testing.assert_close(clean, reference.float())
        same, _ = lm.run(idx[:, :-1], idx[:, 1:], lambda x: x.clone())
        zero, _ = lm.run(idx[:, :-1], idx[:, 1:], torch.zeros_like)
        assert float(same) == pytest.approx(float(clean), abs=1e-6)
        assert abs(float(zero) - float(clean)) > 1e-4, hook
        assert acts.shape[-1] == lm.d_in


def test_direct_path_of_the_last_residual_is_the_logits_up_to_the_norm(model_dirs: dict[str, Path]) -> None:
    """Llama's final RMSNorm has no bias and no mean: the logits of the last block's output are its
    direct-path logit weights applied to it, divided by its RMS. The check that the unembedding and
    the norm's scale are oriented and folded in the right way."""
    folder = model_dirs["llama"]
    idx = ids(folder)
    lm = hooked(folder, f"blocks.{N_LAYERS - 1}.hook_resid_post")
    x = lm.activations(idx)
    with torch.no_grad():
        logits = lm.module(input_ids=idx).logits
    eps = lm.module.config.rms_norm_eps
    rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    torch.testing.assert_close((x @ lm.logit_weights()) / rms, logits, atol=1e-4, rtol=1e-4)
    assert "approximation" in lm.logit_effects_note


@pytest.mark.parametrize("family", FAMILIES)
def test_token_bytes_spell_the_text(model_dirs: dict[str, Path], family: str) -> None:
    """Byte-level pieces (GPT-2, NeoX) and SentencePiece pieces with byte fallback (Llama) both
    give back the text's exact bytes, characters split across tokens included."""
    tokenizer = load_tokenizer(str(model_dirs[family]))
    text = "über 東京 cat\tdog ☃"  # ☃ is in no merge: byte tokens (or byte fallback)
    encoded = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    table = token_bytes(tokenizer, len(tokenizer) + 3)
    spelled = b"".join(table[i] for i in encoded).decode("utf-8")
    assert spelled.lstrip(" ") == text  # SentencePiece's Metaspace adds a leading space
    assert table[-1] == f"<unused {len(tokenizer) + 2}>".encode()
    assert table[tokenizer_info(tokenizer).eot_id] in (b"<|endoftext|>", b"</s>")


def test_a_hook_that_does_not_exist_lists_the_valid_ones(model_dirs: dict[str, Path]) -> None:
    for bad in ("blocks.2.mlp.hook_post", "blocks.0.mlp.hook_pre", "resid"):
        with pytest.raises(HookError) as error:
            load_hooked(str(model_dirs["gpt_neox"]), bad, n_ctx=64)
        message = str(error.value)
        assert "\n" not in message and repr(bad) in message
        assert all(name in message for name in hook_names("gpt_neox", N_LAYERS))
