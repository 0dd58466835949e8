"""COCO caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE.

The standard pipeline (as ``pycocoevalcap.eval.COCOEvalCap``): Stanford PTB tokenisation of references
and candidates, then each scorer on ``{image_id: [tokenised captions]}``. Java is needed for the PTB
tokeniser, METEOR and SPICE. Without Java we log ONE warning, tokenise with a close pure-Python PTB
imitation, skip METEOR and SPICE, and still report BLEU / ROUGE-L / CIDEr. SPICE also needs Stanford
CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use; we never download during evaluation, so
SPICE is skipped (with a warning saying how to enable it) until those jars are in place.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil

logger = logging.getLogger(__name__)

ALL_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
_JAVA_METRICS = ("meteor", "spice")
# Tokens the official tokenizer wrapper drops after PTB tokenisation.
# (With -lowerCase PTB emits "-lrb-" etc., which that upper-case list does not catch: they stay.)
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                    "--", "...", ";", '"'}


def java_available() -> bool:
    return shutil.which("java") is not None


def _pycocoevalcap_dir() -> str:
    import pycocoevalcap
    return list(pycocoevalcap.__path__)[0]


def spice_jars_present() -> bool:
    lib = os.path.join(_pycocoevalcap_dir(), "spice", "lib")
    return all(os.path.isfile(os.path.join(lib, n))
               for n in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"))


# ---- tokenisation -----------------------------------------------------------------------------
# Commas inside numbers ("1,000") stay, as in PTB.
_SPLIT_PUNCT = re.compile(r"([;:!?()\[\]{}\"`]|--|\.\.\.|(?<!\d),|,(?!\d))")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CONTRACTION = re.compile(r"(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")


def python_ptb_tokenize(caption: str) -> str:
    """Approximate ``PTBTokenizer -preserveLines -lowerCase`` + punctuation removal without Java."""
    text = caption.replace("\n", " ").lower()
    text = _SPLIT_PUNCT.sub(r" \1 ", text)
    text = _CONTRACTION.sub(r"\1 \2", text)
    tokens = []
    for tok in text.split():
        tok = tok.strip("'") if not re.fullmatch(r"'(s|re|ve|ll|d|m)", tok) else tok
        # Trailing periods end a sentence unless the token is an abbreviation like "u.s." or "mr."
        if tok.endswith(".") and tok.count(".") == 1 and len(tok) > 1 and tok[:-1] not in _ABBREVIATIONS:
            tok = tok[:-1]
        tok = _BRACKETS.get(tok, tok)
        if tok and tok not in _PTB_PUNCTUATION:
            tokens.append(tok)
    return " ".join(tokens)


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "no", "inc", "co", "ltd"}


def tokenize(captions: dict, use_java: bool) -> dict:
    """``{id: [str, ...]}`` -> ``{id: [tokenised str, ...]}``."""
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        wrapped = {k: [{"caption": c} for c in v] for k, v in captions.items()}
        return PTBTokenizer().tokenize(wrapped)
    return {k: [python_ptb_tokenize(c) for c in v] for k, v in captions.items()}


# ---- scoring ----------------------------------------------------------------------------------
def _normalise_metric_names(metrics) -> list[str]:
    if metrics is None:
        return list(ALL_METRICS)
    names = [str(m).lower().replace("-", "_") for m in metrics]
    names = ["rouge_l" if n == "rouge" else n for n in names]
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise ValueError(f"Unknown caption metric(s) {unknown}; choose from {list(ALL_METRICS)}")
    return names


def _scorer(name: str):
    if name == "bleu":
        from pycocoevalcap.bleu.bleu import Bleu
        return Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
    if name == "meteor":
        from pycocoevalcap.meteor.meteor import Meteor
        return Meteor(), ["METEOR"]
    if name == "rouge_l":
        from pycocoevalcap.rouge.rouge import Rouge
        return Rouge(), ["ROUGE_L"]
    if name == "cider":
        from pycocoevalcap.cider.cider import Cider
        return Cider(), ["CIDEr"]
    from pycocoevalcap.spice.spice import Spice
    return Spice(), ["SPICE"]


def score_captions(references: dict, candidates: dict, metrics=None) -> dict:
    """Score candidate captions against references.

    references: ``{image_id: [ref caption, ...]}``; candidates: ``{image_id: caption}`` (or a one-item
    list). Every candidate id must have references; only the candidate ids are scored (as LAVIS does).
    Returns ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}`` (fractions, not percent)
    for the metrics that could run.
    """
    wanted = _normalise_metric_names(metrics)
    if not candidates:
        raise ValueError("score_captions: no candidate captions to score")
    gts, res = {}, {}
    for img_id, cand in candidates.items():
        if img_id not in references:
            raise KeyError(f"caption result for image_id {img_id!r} has no reference captions")
        refs = list(references[img_id])
        if not refs:
            raise ValueError(f"image_id {img_id!r} has an empty reference list")
        if isinstance(cand, (list, tuple)):
            if len(cand) != 1:
                raise ValueError(f"image_id {img_id!r}: expected one candidate caption, got {len(cand)}")
            cand = cand[0]
        gts[img_id], res[img_id] = refs, [str(cand)]

    use_java = java_available()
    skipped = []
    if not use_java:
        skipped = [m for m in wanted if m in _JAVA_METRICS]
        logger.warning("Java not found on PATH: caption metrics %s skipped and PTB tokenisation replaced by a "
                       "pure-Python approximation (BLEU/ROUGE-L/CIDEr may differ slightly from the official "
                       "figures). Install a JRE (e.g. apt-get install default-jre) for the standard numbers.",
                       skipped or "none")
    elif "spice" in wanted and not spice_jars_present():
        skipped = ["spice"]
        logger.warning("SPICE skipped: it needs Stanford CoreNLP 3.6.0 jars in %s (run `python -m "
                       "pycocoevalcap.spice.get_stanford_models` once, with internet access).",
                       os.path.join(_pycocoevalcap_dir(), "spice", "lib"))
    gts, res = tokenize(gts, use_java), tokenize(res, use_java)

    scores: dict[str, float] = {}
    for name in wanted:
        if name in skipped:
            continue
        try:
            scorer, keys = _scorer(name)
            value, _ = (scorer.compute_score(gts, res, verbose=0) if name == "bleu"
                        else scorer.compute_score(gts, res))
        except Exception as err:  # a broken JVM must not lose the other metrics
            if name not in _JAVA_METRICS:
                raise
            logger.warning("caption metric %s failed and is skipped: %s", name.upper(), err)
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for key, v in zip(keys, values):
            scores[key] = float(v)
    return scores


def load_coco_references(gt_file: str) -> dict:
    """COCO caption ground truth (``{"annotations": [{"image_id", "caption"}, ...]}``) -> ``{str(id): [..]}``."""
    if not os.path.isfile(gt_file):
        raise FileNotFoundError(f"caption ground-truth file {gt_file!r} does not exist")
    with open(gt_file) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{gt_file}: not a COCO caption file (no top-level 'annotations')")
    refs: dict[str, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{gt_file}: annotation #{i} lacks 'image_id' or 'caption': {ann!r}")
        refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    return refs


def coco_caption_eval(gt_file, results: list[dict], metrics=None) -> dict:
    """Score ``[{"image_id", "caption"}, ...]`` against COCO ground-truth file(s) (ids compared as strings)."""
    gt_files = [gt_file] if isinstance(gt_file, (str, os.PathLike)) else list(gt_file)
    references: dict[str, list[str]] = {}
    for path in gt_files:
        for key, refs in load_coco_references(str(path)).items():
            references.setdefault(key, []).extend(refs)
    candidates = {}
    for i, r in enumerate(results):
        if "image_id" not in r or "caption" not in r:
            raise KeyError(f"caption result #{i} lacks 'image_id' or 'caption': {r!r}")
        key = str(r["image_id"])
        if key in candidates:
            raise ValueError(f"caption results hold image_id {r['image_id']!r} twice")
        candidates[key] = r["caption"]
    missing = len(set(references) - set(candidates))
    if missing:
        logger.warning("%d of %d ground-truth images in %s have no generated caption; scoring the %d that do",
                       missing, len(references), ", ".join(map(str, gt_files)), len(candidates))
    return score_captions(references, candidates, metrics=metrics)
