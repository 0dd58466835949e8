"""The BLIP-2 Q-Former: a small BERT whose layers also cross-attend to image features.

Built from a config dict (see :class:`QformerConfig`); no download, no vendored transformers BERT.
Parameter names match LAVIS's ``Blip2Qformer`` and the released checkpoints when the module is stored
under an attribute named ``Qformer``::

    Qformer.bert.embeddings.{word_embeddings, position_embeddings, LayerNorm, position_ids}
    Qformer.bert.encoder.layer.N.attention.{self.{query,key,value}, output.{dense,LayerNorm}}
    Qformer.bert.encoder.layer.N.crossattention.(same; key/value read encoder_width)  # N % freq == 0
    Qformer.bert.encoder.layer.N.{intermediate.dense, output.{dense,LayerNorm}}        # text FFN
    Qformer.bert.encoder.layer.N.{intermediate_query.dense, output_query.{dense,LayerNorm}}
    Qformer.cls.predictions.{transform.dense, transform.LayerNorm, decoder, bias}

With ``text_input=False`` (MiniGPT4-Qwen) the word/position embeddings, the text FFN and ``cls`` are
absent; ``embeddings.LayerNorm`` (applied to the queries) and the ``position_ids`` buffer stay.

API (as LAVIS's BertModel / BertLMHeadModel, so Blip2Qformer ports directly):

* ``Qformer.bert(input_ids=None, query_embeds=None, attention_mask=None, encoder_hidden_states=None,
  encoder_attention_mask=None, is_decoder=False, use_cache=False, past_key_values=None, return_dict=True)``
  -> :class:`QformerOutput` (``last_hidden_state`` [B, Q+T, H], ``past_key_values`` when ``use_cache``).
  The sequence is ``[queries; text]``; ``attention_mask`` [B, past+Q+T] (2-D padding mask, or a ready
  3-D [B, L, K] 0/1 mask). ``is_decoder=True`` builds BLIP-2's prefix-causal mask: queries attend to
  queries only, text attends to every query (including cached ones) and causally to earlier text.
  Queries (the first Q positions) use the query FFN and cross-attend to the image in the cross-attention
  layers; text uses the text FFN. With ``past_key_values`` from a queries-only pass (``use_cache=True``),
  a text-only call continues after the cached queries (text positions restart at 0, as in LAVIS).
* ``Qformer(input_ids, attention_mask, query_embeds=None, past_key_values=None, labels=None,
  encoder_hidden_states=None, encoder_attention_mask=None, reduction="mean", return_dict=True,
  is_decoder=True, use_cache=True)`` -> :class:`QformerLMOutput` (``loss``, ``logits`` over the text
  positions, ``past_key_values``). Next-token loss with LAVIS's label smoothing (config
  ``label_smoothing``, default 0.1), labels -100 ignored; ``reduction="none"`` gives one summed loss
  per sample.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.models.attention import attention


@dataclass
class QformerConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    encoder_width: int = 1408
    cross_attention_freq: int = 2
    query_length: int = 32
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    text_input: bool = False
    label_smoothing: float = 0.1
    initializer_range: float = 0.02

    @classmethod
    def from_dict(cls, cfg) -> "QformerConfig":
        if isinstance(cfg, QformerConfig):
            return cfg
        cfg = dict(cfg or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise KeyError(f"Unknown Q-Former config keys {unknown}; known keys: {sorted(names)}")
        out = cls(**cfg)
        if out.hidden_size % out.num_attention_heads:
            raise ValueError(f"Q-Former hidden_size {out.hidden_size} is not divisible by "
                             f"num_attention_heads {out.num_attention_heads}")
        if out.cross_attention_freq < 1:
            raise ValueError(f"cross_attention_freq must be >= 1, got {out.cross_attention_freq}")
        return out


@dataclass
class QformerOutput:
    last_hidden_state: torch.Tensor
    past_key_values: tuple | None = None


@dataclass
class QformerLMOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: tuple | None = field(default=None)


def extended_attention_mask(attention_mask: torch.Tensor, query_length: int, text_length: int,
                            is_decoder: bool, dtype: torch.dtype) -> torch.Tensor:
    """0/1 mask -> additive [B, 1, L, K] mask for the current L = query_length + text_length positions.

    ``attention_mask`` is [B, K] (K = cached + current positions) or a ready [B, L, K] mask.
    """
    mask = attention_mask.bool()
    if mask.dim() == 3:
        allowed = mask
    elif mask.dim() == 2:
        batch, total = mask.shape
        cur = query_length + text_length
        past = total - cur
        if past < 0:
            raise ValueError(f"attention_mask covers {total} positions but the input has {cur}")
        if is_decoder:
            rows = torch.arange(cur, device=mask.device)[:, None]
            cols = torch.arange(total, device=mask.device)[None, :] - past  # position in the current input
            col_is_text = cols >= query_length
            row_is_text = rows >= query_length
            # Queries never see text; text sees every query (cached ones have cols < 0) and earlier text.
            structure = torch.where(row_is_text, ~col_is_text | (cols <= rows), ~col_is_text)
            allowed = structure[None] & mask[:, None, :]
        else:
            allowed = mask[:, None, :].expand(batch, cur, total)
    else:
        raise ValueError(f"attention_mask must be 2-D or 3-D, got shape {tuple(attention_mask.shape)}")
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


class QformerEmbeddings(nn.Module):
    def __init__(self, cfg: QformerConfig):
        super().__init__()
        if cfg.text_input:
            self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        else:
            self.word_embeddings = self.position_embeddings = None
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=True)

    def forward(self, input_ids=None, query_embeds=None, past_text_length: int = 0) -> torch.Tensor:
        parts = []
        if query_embeds is not None:
            parts.append(query_embeds)
        if input_ids is not None:
            if self.word_embeddings is None:
                raise ValueError("This Q-Former was built without text input (text_input=False); "
                                 "pass query_embeds only")
            length = input_ids.shape[1]
            positions = self.position_ids[:, past_text_length:past_text_length + length]
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        if not parts:
            raise ValueError("Q-Former needs input_ids and/or query_embeds")
        return self.dropout(self.LayerNorm(torch.cat(parts, dim=1)))


class QformerSelfAttention(nn.Module):
    def __init__(self, cfg: QformerConfig, kv_width: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout
        self.attn_implementation = "sdpa"  # or "eager" (models/attention.py)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden, mask=None, kv_states=None, past_key_value=None):
        source = hidden if kv_states is None else kv_states.to(self.key.weight.dtype)
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(source)), self._heads(self.value(source))
        if past_key_value is not None:
            k = torch.cat((past_key_value[0], k), dim=2)
            v = torch.cat((past_key_value[1], v), dim=2)
        out = attention(q, k, v, mask, dropout_p=self.dropout_p if self.training else 0.0,
                        implementation=self.attn_implementation)
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, -1), (k, v)


class QformerResidual(nn.Module):
    """dense -> dropout -> add the block input -> LayerNorm (BERT's *Output modules)."""

    def __init__(self, in_dim: int, cfg: QformerConfig):
        super().__init__()
        self.dense = nn.Linear(in_dim, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class QformerAttention(nn.Module):
    def __init__(self, cfg: QformerConfig, kv_width: int):
        super().__init__()
        self.self = QformerSelfAttention(cfg, kv_width)
        self.output = QformerResidual(cfg.hidden_size, cfg)

    def forward(self, hidden, mask=None, kv_states=None, past_key_value=None):
        out, present = self.self(hidden, mask, kv_states, past_key_value)
        return self.output(out, hidden), present


class QformerIntermediate(nn.Module):
    def __init__(self, cfg: QformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))


class QformerLayer(nn.Module):
    def __init__(self, cfg: QformerConfig, layer_idx: int):
        super().__init__()
        self.attention = QformerAttention(cfg, cfg.hidden_size)
        self.has_cross_attention = layer_idx % cfg.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = QformerAttention(cfg, cfg.encoder_width)
        if cfg.text_input:
            self.intermediate = QformerIntermediate(cfg)
            self.output = QformerResidual(cfg.intermediate_size, cfg)
        self.intermediate_query = QformerIntermediate(cfg)
        self.output_query = QformerResidual(cfg.intermediate_size, cfg)

    def _text_ffn(self, hidden: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "intermediate"):
            raise ValueError("text positions reached a Q-Former built without text input")
        return self.output(self.intermediate(hidden), hidden)

    def forward(self, hidden, mask, query_length, encoder_hidden_states=None, encoder_mask=None,
                past_key_value=None):
        hidden, present = self.attention(hidden, mask, past_key_value=past_key_value)
        if query_length == 0:
            return self._text_ffn(hidden), present
        queries = hidden[:, :query_length]
        if self.has_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("Q-Former queries need encoder_hidden_states (the image features)")
            queries, _ = self.crossattention(queries, encoder_mask, kv_states=encoder_hidden_states)
        queries = self.output_query(self.intermediate_query(queries), queries)
        if hidden.shape[1] > query_length:
            text = self._text_ffn(hidden[:, query_length:])
            return torch.cat((queries, text), dim=1), present
        return queries, present


class QformerEncoder(nn.Module):
    def __init__(self, cfg: QformerConfig):
        super().__init__()
        self.layer = nn.ModuleList(QformerLayer(cfg, i) for i in range(cfg.num_hidden_layers))


class QformerModel(nn.Module):
    """The ``bert`` part: embeddings + encoder."""

    def __init__(self, cfg: QformerConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = QformerEmbeddings(cfg)
        self.encoder = QformerEncoder(cfg)

    def forward(self, input_ids=None, query_embeds=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, is_decoder=False, use_cache=False, past_key_values=None,
                return_dict=True):
        query_length = query_embeds.shape[1] if query_embeds is not None else 0
        past_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        # As LAVIS: text positions start after cached text, not after cached queries.
        past_text = max(past_length - self.config.query_length, 0) if past_key_values is not None else 0
        hidden = self.embeddings(input_ids, query_embeds, past_text)
        batch, length = hidden.shape[:2]
        text_length = length - query_length
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, device=hidden.device)
        mask = extended_attention_mask(attention_mask, query_length, text_length, is_decoder, hidden.dtype)
        enc_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            enc_mask = extended_attention_mask(encoder_attention_mask, query_length, 0, False, hidden.dtype)
        presents = [] if use_cache else None
        for i, layer in enumerate(self.encoder.layer):
            past = past_key_values[i] if past_key_values is not None else None
            hidden, present = layer(hidden, mask, query_length, encoder_hidden_states, enc_mask, past)
            if use_cache:
                presents.append(present)
        presents = tuple(presents) if use_cache else None
        if not return_dict:
            return (hidden, presents)
        return QformerOutput(last_hidden_state=hidden, past_key_values=presents)


class QformerPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: QformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class QformerLMPredictionHead(nn.Module):
    def __init__(self, cfg: QformerConfig):
        super().__init__()
        self.transform = QformerPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Released BERT/LAVIS checkpoints also store the tied alias ``decoder.bias`` (same tensor as ``bias``).
        alias = state_dict.pop(prefix + "decoder.bias", None)
        if alias is not None and prefix + "bias" not in state_dict:
            state_dict[prefix + "bias"] = alias
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden)) + self.bias


class QformerOnlyMLMHead(nn.Module):
    def __init__(self, cfg: QformerConfig):
        super().__init__()
        self.predictions = QformerLMPredictionHead(cfg)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class QformerLMHeadModel(nn.Module):
    """``Qformer``: ``bert`` plus (with text input) the LM head ``cls``."""

    def __init__(self, cfg):
        super().__init__()
        cfg = QformerConfig.from_dict(cfg)
        self.config = cfg
        self.bert = QformerModel(cfg)
        self.cls = QformerOnlyMLMHead(cfg) if cfg.text_input else None
        if not self.bert.embeddings.LayerNorm.weight.is_meta:
            self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, attention_mask=None, query_embeds=None, past_key_values=None, labels=None,
                encoder_hidden_states=None, encoder_attention_mask=None, reduction="mean", return_dict=True,
                is_decoder=True, use_cache=True):
        if self.cls is None:
            raise ValueError("This Q-Former has no LM head (text_input=False)")
        if labels is not None:
            use_cache = False
        if past_key_values is not None:
            query_embeds = None
        out = self.bert(input_ids=input_ids, query_embeds=query_embeds, attention_mask=attention_mask,
                        encoder_hidden_states=encoder_hidden_states,
                        encoder_attention_mask=encoder_attention_mask, is_decoder=is_decoder,
                        use_cache=use_cache, past_key_values=past_key_values)
        hidden = out.last_hidden_state
        if query_embeds is not None:
            hidden = hidden[:, query_embeds.shape[1]:]
        logits = self.cls(hidden)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float()
            target = labels[:, 1:]
            loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1),
                                   ignore_index=-100, reduction="none" if reduction == "none" else reduction,
                                   label_smoothing=self.config.label_smoothing)
            if reduction == "none":
                loss = loss.view(logits.shape[0], -1).sum(1)
        if not return_dict:
            return (loss, logits, out.past_key_values)
        return QformerLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values)
