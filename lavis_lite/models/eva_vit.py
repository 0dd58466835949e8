"""EVA-ViT-G, the frozen image encoder of BLIP-2 / MiniGPT4-Qwen.

Parameter names follow the released ``eva_vit_g.pth`` so it loads unchanged:
``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.{qkv, q_bias, v_bias, proj},
norm2, mlp.{fc1, fc2}}``. BLIP-2 keeps 39 of the 40 blocks and no final norm / head, so the output is
every token (cls first) of the last kept block. Every size is a constructor argument so the same class
builds the full model (on the meta device in tests) and the tiny CPU model.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavis_lite.models.attention import attention

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero a residual branch and rescale the survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"EVA-ViT expects {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    """Multi-head self-attention with EVA's bias layout: qkv has no bias, q and v have their own, k none."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.attn_implementation = "sdpa"  # or "eager" (models/attention.py)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                        implementation=self.attn_implementation)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path_rate: float,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x))).to(x.dtype)  # residual keeps its (fp32) dtype
        return x + self.drop_path(self.mlp(self.norm2(x))).to(x.dtype)


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1408,
                 depth: int = 39, num_heads: int = 16, mlp_ratio: float = 4.3637, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, use_checkpoint: bool = False, eps: float = 1e-6):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.num_features = self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        # stochastic depth grows linearly with depth (plain floats: works under a meta-device context too)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], eps) for i in range(depth))
        if not self.cls_token.is_meta:
            self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # EVA rescales the residual output projections by depth for a stable start.
        for i, blk in enumerate(self.blocks):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * (i + 1)))

    @property
    def half_dtype(self) -> torch.dtype | None:
        """fp16 / bf16 when the Linear/Conv weights were converted (``convert_weights_to_fp16``), else None."""
        dtype = self.patch_embed.proj.weight.dtype
        return dtype if dtype in (torch.float16, torch.bfloat16) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As the released model runs: half-precision Linear/Conv weights under autocast (their matmuls in
        # half), LayerNorms and the residual stream in fp32. Entered here when the caller has no autocast.
        half = self.half_dtype
        if half is not None and not torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, dtype=half):
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        # The stream takes cls_token's dtype (fp32 unless the whole model was cast): the half outputs of
        # attention / MLP are added to an fp32 residual, as in LAVIS where torch.cat promotes to fp32.
        stream = self.cls_token.dtype
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x.to(stream)), dim=1)
        x = x + self.pos_embed.to(stream)
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def get_num_layer(self, var_name: str = "") -> int:
        """Layer id for layer-wise lr decay: embeddings 0, block i -> i + 1, anything else depth + 1."""
        if var_name in ("cls_token", "pos_embed") or var_name.startswith("patch_embed"):
            return 0
        if var_name.startswith("blocks."):
            return int(var_name.split(".")[1]) + 1
        return len(self.blocks) + 1


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a [1, 1 + g*g, D] position embedding (cls first) to ``num_patches`` patch positions."""
    old = pos_embed.shape[1] - 1
    if old == num_patches:
        return pos_embed
    old_grid, new_grid = int(round(math.sqrt(old))), int(round(math.sqrt(num_patches)))
    if old_grid * old_grid != old or new_grid * new_grid != num_patches:
        raise ValueError(f"pos_embed interpolation needs square grids, got {old} -> {num_patches} patches")
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, num_patches, dim).to(pos_embed.dtype)
    logger.info("interpolated EVA-ViT pos_embed from %dx%d to %dx%d", old_grid, old_grid, new_grid, new_grid)
    return torch.cat((cls_pos, grid), dim=1)


def load_vit_checkpoint(model: VisionTransformer, path: str) -> dict:
    """Load an EVA-ViT checkpoint (e.g. eva_vit_g.pth) into ``model``.

    Blocks beyond the model's depth and the classifier ``norm`` / ``head`` / ``fc_norm`` are dropped
    with a logged note; any other unexpected or missing key raises, naming it.
    """
    from lavis_lite.models.base_model import CheckpointMismatchError, load_state_dict_file

    state = load_state_dict_file(path)
    state = {k[len("visual_encoder."):] if k.startswith("visual_encoder.") else k: v for k, v in state.items()}
    own = model.state_dict()
    dropped = []
    for key in list(state):
        parts = key.split(".")
        extra_block = parts[0] == "blocks" and int(parts[1]) >= len(model.blocks)
        if extra_block or parts[0] in ("norm", "head", "fc_norm"):
            dropped.append(key)
            del state[key]
    if "pos_embed" in state:
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], model.patch_embed.num_patches)
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
           if k in own and state[k].shape != own[k].shape]
    if unexpected or missing or bad:
        raise CheckpointMismatchError(f"EVA-ViT checkpoint {path!r} does not fit: unexpected {unexpected[:10]}, "
                                      f"missing {missing[:10]}, shape mismatch {bad[:10]}")
    model.load_state_dict(state, strict=True)
    if dropped:
        blocks = sorted({".".join(k.split(".")[:2]) for k in dropped if k.startswith("blocks.")})
        others = sorted({k.split(".")[0] for k in dropped if not k.startswith("blocks.")})
        logger.info("EVA-ViT %s: dropped %d tensors not used by BLIP-2 (%s)", path, len(dropped),
                    ", ".join(blocks + others))
    return {"dropped": dropped}


def convert_weights_to_fp16(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """LAVIS's rule for the fp16 EVA-ViT: only Linear / Conv weights and biases become half precision;
    LayerNorms, ``q_bias`` / ``v_bias``, ``pos_embed`` and ``cls_token`` stay fp32 (275 of EVA-ViT-G's
    511 tensors are converted)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
    return model


def cast_precision(model: nn.Module, precision: str) -> nn.Module:
    """``fp32``: as built; ``fp16`` / ``bf16``: LAVIS's rule (``convert_weights_to_fp16``), run under
    autocast with an fp32 residual stream (``VisionTransformer.forward``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"vit_precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return model.float()
    return convert_weights_to_fp16(model, PRECISIONS[precision])


def create_eva_vit_g(img_size: int = 224, drop_path_rate: float = 0.4, use_checkpoint: bool = False,
                     precision: str = "fp16", checkpoint_path: str | None = None, **sizes) -> VisionTransformer:
    """The BLIP-2 EVA-ViT-G (39 blocks of width 1408); ``sizes`` override any constructor size (tiny model).

    ``checkpoint_path`` is a local eva_vit_g.pth (or .safetensors); nothing is loaded without it.
    """
    kwargs = dict(img_size=img_size, patch_size=14, embed_dim=1408, depth=39, num_heads=16, mlp_ratio=4.3637,
                  qkv_bias=True, drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)
    kwargs.update(sizes)
    model = VisionTransformer(**kwargs)
    if checkpoint_path:
        load_vit_checkpoint(model, checkpoint_path)
    return cast_precision(model, precision)
