"""The one-layer transformer of the paper's A/1 shape (Bricken et al. 2023, "Problem Setup").

One pre-LayerNorm attention block and one MLP of `d_mlp` ReLU neurons, residual width 128.
The MLP's post-nonlinearity activations are the hook point `HOOK_MLP_POST`: `forward` can
return them and can replace them (for loss recovered and steering), and `mlp_activations`
stops right after them so harvesting pays for no unembedding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from trainer.config import ModelConfig

HOOK_MLP_POST = "blocks.0.mlp.hook_post"

MLPReplacement = Callable[[torch.Tensor], torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        # [batch, heads, seq, d_head]
        q, k, v = (t.view(batch, seq, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, seq, d_model))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.nonlinearity: Callable[[torch.Tensor], torch.Tensor] = (
            F.relu if cfg.activation == "relu" else F.gelu
        )

    def post(self, x: torch.Tensor) -> torch.Tensor:
        """The hook point: MLP activations after the nonlinearity, [..., d_mlp]."""
        return self.nonlinearity(self.W_in(x))


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [batch, seq, vocab]
    loss: torch.Tensor | None  # mean next-token cross-entropy when targets are given
    mlp_post: torch.Tensor | None  # [batch, seq, d_mlp] when asked for


class OneLayerTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual-writing projections.
        for proj in (self.attn.out, self.mlp.W_out):
            nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def _residual_before_mlp(self, idx: torch.Tensor) -> torch.Tensor:
        batch, seq = idx.shape
        if seq > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {seq} tokens is longer than the model's context ({self.cfg.n_ctx})"
            )
        positions = torch.arange(seq, device=idx.device)
        x = self.embed(idx) + self.pos_embed(positions)
        return x + self.attn(self.ln_attn(x))

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        mlp_replacement: MLPReplacement | None = None,
        return_mlp_post: bool = False,
        fp32_loss: bool = True,
    ) -> ModelOutput:
        """Logits for `idx` [batch, seq]; `mlp_replacement` maps the MLP activations to what the
        MLP output projection sees instead (an SAE reconstruction, zeros, a steered vector).
        `fp32_loss=False` keeps bf16 logits in the loss: twice as fast in training, too coarse
        for evaluation."""
        x = self._residual_before_mlp(idx)
        mlp_post = self.mlp.post(self.ln_mlp(x))
        used = mlp_replacement(mlp_post) if mlp_replacement is not None else mlp_post
        x = x + self.mlp.W_out(used.to(x.dtype))
        logits = self.unembed(self.ln_final(x))
        loss = None
        if targets is not None:
            flat = logits.flatten(0, 1)
            loss = F.cross_entropy(flat.float() if fp32_loss else flat, targets.flatten())
        return ModelOutput(logits=logits, loss=loss, mlp_post=mlp_post if return_mlp_post else None)

    @torch.no_grad()
    def mlp_activations(self, idx: torch.Tensor) -> torch.Tensor:
        """The hook point's values [batch, seq, d_mlp], without computing the logits."""
        return self.mlp.post(self.ln_mlp(self._residual_before_mlp(idx)))

    def direct_logit_weights(self) -> torch.Tensor:
        """[d_mlp, vocab]: each MLP neuron's direct effect on the logits through W_out and the
        unembedding (final LayerNorm treated as its learned scale, the usual linearisation)."""
        w_out = self.mlp.W_out.weight.T  # [d_mlp, d_model]
        return (w_out * self.ln_final.weight) @ self.unembed.weight.T

    # ------------------------------------------------------------------ save / load

    def save(self, directory: Path) -> None:
        from trainer.checkpoint import atomic_save_safetensors, atomic_write_text

        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(
            {k: v.detach().contiguous() for k, v in self.state_dict().items()},
            directory / "model.safetensors",
        )
        atomic_write_text(directory / "config.json", json.dumps(asdict(self.cfg), indent=2))

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> OneLayerTransformer:
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.exists():
                raise FileNotFoundError(
                    f"no trained model at {directory}: {path.name} is missing (run train-lm)"
                )
        cfg = ModelConfig(**json.loads(config_path.read_text()))
        model = cls(cfg)
        try:
            state = load_file(str(weights_path), device=device)
        except Exception as exc:  # safetensors raises several types for truncated files
            raise ValueError(f"model weights {weights_path} are corrupt or truncated: {exc}") from exc
        model.load_state_dict(state)
        return model.to(device).eval()
