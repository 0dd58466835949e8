"""BLIP visual question answering (registered "blip_vqa"; types vqav2, okvqa, aokvqa, tiny).

As LAVIS's BlipVQA: ViT -> ``text_encoder`` (question, ``[CLS]`` -> ``[ENC]``, cross-attending to the
image) -> ``text_decoder`` (answer, ``[CLS]`` -> ``[DEC]``, cross-attending to the question states).
Training loss: per answer, the label-smoothed (0.1) summed cross-entropy, weighted by the answer's
``weight``; total Σ weight·loss / batch size. Answers come flat, ``n_answers[i]`` per question
(LAVIS's ``answer`` / ``weight`` keys, or lavis_lite's VQA collater's ``answers`` / ``weights``).

``predict_answers(samples, inference_method="generate" | "rank", ...)``: "generate" decodes from
``[DEC]`` (beam search); "rank" scores ``answer_list``: the ``num_ans_candidates`` answers with the most
probable first token, then the best by the whole answer's loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lavis_lite.common.registry import registry
from lavis_lite.models.blip.base import BlipBase
from lavis_lite.models.blip.text import build_text_decoder, build_text_encoder, init_blip_tokenizer, text_config


@registry.register_model("blip_vqa")
class BlipVQA(BlipBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "vqav2": "configs/models/blip/blip_vqav2.yaml",
        "okvqa": "configs/models/blip/blip_vqa_okvqa.yaml",
        "aokvqa": "configs/models/blip/blip_vqa_aokvqa.yaml",
        "tiny": "configs/models/blip/blip_vqa_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "vqav2"
    DROPPABLE_KEYS = BlipBase.PRETRAIN_EXTRAS  # fine-tuning starts from the pretrain file

    def __init__(self, vit_type: str = "base", image_size: int = 480, vit_grad_ckpt: bool = False,
                 vit_ckpt_layer: int = 0, drop_path_rate: float | None = None, vit_sizes: dict | None = None,
                 med_config: dict | None = None, tokenizer_vocab: str | None = "bert-base-uncased",
                 max_txt_len: int = 35, label_smoothing: float = 0.1, inference_method: str = "generate",
                 answer_list: str | list | None = None, num_ans_candidates: int = 128):
        super().__init__()
        self.tokenizer = init_blip_tokenizer(tokenizer_vocab)
        self.visual_encoder = self.build_vit(vit_type, image_size, vit_grad_ckpt, vit_ckpt_layer, drop_path_rate,
                                             vit_sizes)
        width = self.visual_encoder.num_features
        self.text_encoder = build_text_encoder(text_config(med_config, self.tokenizer, width))
        # The decoder cross-attends to the question states (text width), not to the image.
        self.text_decoder = build_text_decoder(text_config(med_config, self.tokenizer,
                                                           self.text_encoder.config.hidden_size, label_smoothing))
        self.max_txt_len = max_txt_len
        if inference_method not in ("generate", "rank"):
            raise ValueError(f"inference_method must be 'generate' or 'rank', got {inference_method!r}")
        self.inference_method, self.num_ans_candidates = inference_method, int(num_ans_candidates)
        self.answer_list = _read_answer_list(answer_list)

    # ---- encoders -----------------------------------------------------------------
    def encode_question(self, samples: dict):
        """(question states [B, L, H], question attention mask [B, L])."""
        image_embeds = self.encode_image(samples["image"])
        questions = self.tokenize(samples["text_input"])
        ids = questions.input_ids.clone()
        ids[:, 0] = self.tokenizer.enc_token_id
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = self.text_encoder(ids, attention_mask=questions.attention_mask, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=atts, return_dict=True)
        return out.last_hidden_state, questions.attention_mask

    # ---- training -------------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        answers = samples.get("answer", samples.get("answers"))
        weights = samples.get("weight", samples.get("weights"))
        self.require(samples, "image", "text_input", "n_answers", who="BlipVQA.forward")
        if answers is None or weights is None:
            raise KeyError(f"BlipVQA.forward needs the answers ('answer' or 'answers') and their weights ('weight' "
                           f"or 'weights'); got keys {sorted(samples)}")
        n_answers = torch.as_tensor(samples["n_answers"], device=self.device)
        weights = torch.as_tensor(weights, dtype=torch.float, device=self.device)
        if int(n_answers.sum()) != len(answers) or len(weights) != len(answers):
            raise ValueError(f"BlipVQA: {len(answers)} answers, {len(weights)} weights, but n_answers sums to "
                             f"{int(n_answers.sum())}")
        question_states, question_atts = self.encode_question(samples)
        tokens = self.tokenizer(list(answers), padding="longest", return_tensors="pt").to(self.device)
        ids = tokens.input_ids.clone()
        ids[:, 0] = self.tokenizer.bos_token_id
        targets = ids.masked_fill(ids == self.tokenizer.pad_token_id, -100)
        out = self.text_decoder(ids, attention_mask=tokens.attention_mask,
                                encoder_hidden_states=question_states.repeat_interleave(n_answers, dim=0),
                                encoder_attention_mask=question_atts.repeat_interleave(n_answers, dim=0),
                                labels=targets, reduction="none", return_dict=True)
        loss = (weights * out.loss).sum() / samples["image"].shape[0]
        supervised = targets[:, 1:] != -100
        n_correct = ((out.logits[:, :-1].argmax(-1) == targets[:, 1:]) & supervised).sum()
        # A per-question loss: the runner weights micro-batches by questions.
        return {"loss": loss, "n_tokens": int(samples["image"].shape[0]), "n_correct": int(n_correct)}

    # ---- inference --------------------------------------------------------------------
    @torch.no_grad()
    def predict_answers(self, samples: dict, num_beams: int = 3, inference_method: str | None = None,
                        max_len: int = 10, min_len: int = 1, num_ans_candidates: int | None = None,
                        answer_list: list[str] | None = None, **kwargs) -> list[str]:
        self.require(samples, "image", "text_input", who="BlipVQA.predict_answers")
        if kwargs:
            raise TypeError(f"BlipVQA.predict_answers got unknown arguments {sorted(kwargs)}")
        if isinstance(samples["text_input"], str):
            samples = {**samples, "text_input": [samples["text_input"]]}
        if len(samples["text_input"]) != samples["image"].shape[0]:
            raise ValueError(f"BlipVQA: {samples['image'].shape[0]} images but {len(samples['text_input'])} questions")
        method = inference_method or self.inference_method
        question_states, question_atts = self.encode_question(samples)
        if method == "generate":
            return self._generate(question_states, num_beams, max_len, min_len)
        if method == "rank":
            answers = answer_list if answer_list is not None else self.answer_list
            if not answers:
                raise ValueError("BlipVQA: inference_method='rank' needs answer_list (argument or model.answer_list)")
            k = min(num_ans_candidates or self.num_ans_candidates, len(answers))
            return self._rank(question_states, question_atts, list(answers), k)
        raise ValueError(f"inference_method must be 'generate' or 'rank', got {method!r}")

    def generate(self, samples: dict, num_beams: int = 3, max_new_tokens: int = 10, min_length: int = 1,
                 **unused) -> list[str]:
        """lavis_lite's generation contract (the ``vqa`` task): questions from ``samples["prompt"]``
        (run.prompt "{}") or ``text_input``; LAVIS's ``predict_answers`` settings otherwise."""
        unknown = sorted(set(unused) - {"repetition_penalty", "temperature", "top_p", "do_sample"})
        if unknown or unused.get("do_sample"):
            raise TypeError(f"BlipVQA.generate decodes with beam search only; unsupported arguments "
                            f"{unknown or ['do_sample=True']}")
        questions = samples.get("prompt") or samples.get("text_input")
        return self.predict_answers({"image": samples["image"], "text_input": questions}, num_beams=num_beams,
                                    max_len=max_new_tokens + 1, min_len=min_length)

    def _generate(self, question_states, num_beams, max_len, min_len) -> list[str]:
        bos = torch.full((question_states.shape[0], 1), self.tokenizer.bos_token_id, device=self.device)
        atts = torch.ones(question_states.shape[:-1], dtype=torch.long, device=self.device)
        out = self.text_decoder.generate(input_ids=bos, max_length=max_len, min_length=min_len, num_beams=num_beams,
                                         encoder_hidden_states=question_states, encoder_attention_mask=atts,
                                         eos_token_id=self.tokenizer.sep_token_id,
                                         pad_token_id=self.tokenizer.pad_token_id, do_sample=False)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _rank(self, question_states, question_atts, answer_list, k) -> list[str]:
        tokens = self.tokenizer(answer_list, padding="longest", return_tensors="pt").to(self.device)
        answer_ids = tokens.input_ids.clone()
        answer_ids[:, 0] = self.tokenizer.bos_token_id
        n_questions = question_states.shape[0]
        start = answer_ids[:1, :1].expand(n_questions, 1)
        first = self.text_decoder(start, encoder_hidden_states=question_states, encoder_attention_mask=question_atts,
                                  return_dict=True)
        prob_first = F.softmax(first.logits[:, 0].float(), dim=-1).index_select(1, answer_ids[:, 1])
        _, top_ids = prob_first.topk(k, dim=1)  # [Q, k]
        ids = answer_ids[top_ids.reshape(-1)]
        atts = tokens.attention_mask[top_ids.reshape(-1)]
        targets = ids.masked_fill(ids == self.tokenizer.pad_token_id, -100)
        out = self.text_decoder(ids, attention_mask=atts,
                                encoder_hidden_states=question_states.repeat_interleave(k, dim=0),
                                encoder_attention_mask=question_atts.repeat_interleave(k, dim=0),
                                labels=targets, reduction="none", return_dict=True)
        best = (-out.loss).view(n_questions, k).argmax(dim=1)
        chosen = top_ids.gather(1, best[:, None]).squeeze(1)
        return [answer_list[i] for i in chosen.tolist()]


def _read_answer_list(answer_list):
    """A list of answers, or a JSON file holding one (LAVIS's answer_list.json)."""
    if answer_list is None or isinstance(answer_list, (list, tuple)):
        return list(answer_list) if answer_list is not None else None
    import json
    import os
    from omegaconf import OmegaConf
    if OmegaConf.is_config(answer_list):
        return list(OmegaConf.to_container(answer_list))
    path = os.path.expanduser(str(answer_list))
    if not os.path.isabs(path) and not os.path.isfile(path):  # relative paths live under cache_root
        from lavis_lite.common.registry import registry
        try:
            path = os.path.join(registry.get_path("cache_root"), path)
        except KeyError:
            pass
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BlipVQA answer_list {answer_list!r}: no such file (looked at {path})")
    with open(path) as f:
        answers = json.load(f)
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{path}: an answer list must be a JSON list of strings")
    return answers
