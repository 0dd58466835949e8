"""BLIP's image encoder: a plain ViT (ViT-B/16 or ViT-L/16), pre-norm blocks, LayerNorm eps 1e-6.

Parameter names are LAVIS's ``lavis.models.vit.VisionTransformer`` (and the released BLIP files')::

    cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm

The forward returns every token, [B, 1 + patches, width] (LAVIS's ``forward_features``). A checkpoint
whose ``pos_embed`` was trained at another image size is resized on load (bicubic over the patch grid,
as LAVIS's ``interpolate_pos_embed``), and the resize is logged.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

VIT_SIZES = {  # LAVIS create_vit: vit_type -> (width, depth, heads, default drop_path_rate)
    "base": dict(embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.1),
}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: drop the whole residual branch of a sample, rescale the kept ones."""
        if not self.training or self.drop_path == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.drop_path)
        return x * keep / (1 - self.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 use_grad_checkpointing: bool = False, ckpt_layer: int = 0, layer_norm_eps: float = 1e-6):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r, layer_norm_eps) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        # LAVIS checkpoints the last ``ckpt_layer`` blocks only.
        self.grad_ckpt_from = depth - ckpt_layer if use_grad_checkpointing else depth
        if not self.cls_token.is_meta:
            self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image.to(self.cls_token.dtype))
        if x.shape[1] != self.num_patches:
            raise ValueError(f"image of size {tuple(image.shape[-2:])} gives {x.shape[1]} patches; this ViT was "
                             f"built for {self.img_size}x{self.img_size} ({self.num_patches} patches)")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for i, block in enumerate(self.blocks):
            if i >= self.grad_ckpt_from and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    forward_features = forward  # LAVIS's name

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape and not self.pos_embed.is_meta:
            old = state_dict[key]
            state_dict[key] = interpolate_pos_embed(old, self.num_patches)
            logger.info("%s: resized from %s to %s (image size %d)", key, tuple(old.shape),
                        tuple(self.pos_embed.shape), self.img_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """[1, 1 + n_old, C] -> [1, 1 + num_patches, C]: the class position is kept, the grid resized bicubically."""
    old_side, new_side = int((pos_embed.shape[1] - 1) ** 0.5), int(num_patches ** 0.5)
    if old_side * old_side != pos_embed.shape[1] - 1 or new_side * new_side != num_patches:
        raise ValueError(f"pos_embed {tuple(pos_embed.shape)} cannot be resized to {num_patches} patches "
                         "(square grids only)")
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_side, old_side, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=1)


def create_vit(vit_type: str = "base", image_size: int = 384, use_grad_checkpointing: bool = False,
               ckpt_layer: int = 0, drop_path_rate: float | None = None, vit_sizes: dict | None = None):
    """LAVIS's ``create_vit``: "base" (ViT-B/16) or "large" (ViT-L/16); ``vit_sizes`` (patch_size,
    embed_dim, depth, num_heads, mlp_ratio) override the sizes, for the tiny test models."""
    if vit_type not in VIT_SIZES:
        raise ValueError(f"vit_type must be one of {sorted(VIT_SIZES)}, got {vit_type!r}")
    sizes = dict(VIT_SIZES[vit_type])
    default_drop = sizes.pop("drop_path_rate")
    sizes.update(dict(vit_sizes or {}))
    return VisionTransformer(img_size=image_size, use_grad_checkpointing=use_grad_checkpointing,
                             ckpt_layer=ckpt_layer,
                             drop_path_rate=default_drop if drop_path_rate is None else drop_path_rate, **sizes)
