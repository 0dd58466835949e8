"""Caption metrics: our scorer equals pycocoevalcap's own figures; the missing-Java path."""
import json
import logging
import shutil

import pytest

from lavis_lite.tasks.metrics import caption_eval
from lavis_lite.tasks.metrics.caption_eval import coco_caption_eval, python_ptb_tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not installed")

REFERENCES = {
    101: ["A man riding a horse on the beach.", "Someone rides a brown horse by the sea!",
          "A person on horseback near the water."],
    102: ["Two dogs play in the park, it's sunny.", "Dogs running on the grass.", "two dogs in a park"],
    103: ["A red square next to a blue circle.", "A blue circle and a red square.", "red square, blue circle"],
}
CANDIDATES = {101: "a man rides a horse on the beach", 102: "two dogs play in a park",
              103: "a red square and a blue circle"}


def _write_files(tmp_path):
    gt = {"images": [{"id": i} for i in REFERENCES],
          "annotations": [{"image_id": i, "id": n, "caption": c}
                          for n, (i, c) in enumerate((i, c) for i, cs in REFERENCES.items() for c in cs)]}
    gt_file = tmp_path / "test_gt.json"
    gt_file.write_text(json.dumps(gt))
    results = [{"image_id": i, "caption": c} for i, c in CANDIDATES.items()]
    return str(gt_file), results


class _Records(logging.Handler):
    # lavis_lite's logger may have propagate=False after setup_logger(); listen on the module's logger itself.
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _direct_pycocoevalcap(tokenized_gts, tokenized_res, with_meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    out = {}
    bleu, _ = Bleu(4).compute_score(tokenized_gts, tokenized_res, verbose=0)
    out.update({f"Bleu_{i + 1}": b for i, b in enumerate(bleu)})
    out["ROUGE_L"], _ = Rouge().compute_score(tokenized_gts, tokenized_res)
    out["CIDEr"], _ = Cider().compute_score(tokenized_gts, tokenized_res)
    if with_meteor:
        from pycocoevalcap.meteor.meteor import Meteor
        out["METEOR"], _ = Meteor().compute_score(tokenized_gts, tokenized_res)
    return out


@needs_java
def test_scores_equal_pycocoevalcap_figures(tmp_path):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    gt_file, results = _write_files(tmp_path)
    ours = coco_caption_eval(gt_file, results, metrics=["bleu", "meteor", "rouge_l", "cider"])

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in cs] for i, cs in REFERENCES.items()})
    res = tok.tokenize({i: [{"caption": c}] for i, c in CANDIDATES.items()})
    direct = _direct_pycocoevalcap(gts, res, with_meteor=True)

    assert set(ours) == set(direct) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    for key, value in direct.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < ours["Bleu_4"] < ours["Bleu_1"] <= 1 and ours["CIDEr"] > 0.5


def test_missing_java_skips_meteor_and_spice_with_one_warning(tmp_path, monkeypatch):
    gt_file, results = _write_files(tmp_path)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # no java reachable: any attempt to run it would crash
    assert not caption_eval.java_available()
    log, handler = logging.getLogger(caption_eval.__name__), _Records()
    log.addHandler(handler)
    try:
        ours = coco_caption_eval(gt_file, results)  # all metrics requested, SPICE included
    finally:
        log.removeHandler(handler)
    warnings = handler.records
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Java not found" in warnings[0].getMessage() and "meteor" in warnings[0].getMessage()
    assert "METEOR" not in ours and "SPICE" not in ours
    assert {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"} <= set(ours)

    # The figures are pycocoevalcap's on the pure-Python tokenisation.
    gts = {i: [python_ptb_tokenize(c) for c in cs] for i, cs in REFERENCES.items()}
    res = {i: [python_ptb_tokenize(c)] for i, c in CANDIDATES.items()}
    direct = _direct_pycocoevalcap(gts, res, with_meteor=False)
    for key, value in direct.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


@needs_java
def test_python_tokenizer_matches_ptb():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    sentences = [
        "A man riding a horse on the beach.", "Two dogs don't play (in) the park, it's sunny.",
        'A "red" car [parked] {here} -- next to Mr. Smith\'s house...', "The U.S. flag flies at 3.5 meters; nice: wow?",
        "a black-and-white photo of a cat's toy", "I can't believe it's not butter", "a 10-year-old boy and 1,000 birds",
        "What is this? A cat.", "A sign reads 'stop' here",
    ]
    java = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    for i, s in enumerate(sentences):
        assert python_ptb_tokenize(s) == java[i][0], s


def test_bad_input_is_named(tmp_path):
    gt_file, results = _write_files(tmp_path)
    with pytest.raises(KeyError, match="999"):
        coco_caption_eval(gt_file, results + [{"image_id": 999, "caption": "x"}], metrics=["bleu"])
    with pytest.raises(ValueError, match="twice"):
        coco_caption_eval(gt_file, results + results[:1], metrics=["bleu"])
    with pytest.raises(ValueError, match="Unknown caption metric"):
        coco_caption_eval(gt_file, results, metrics=["bleurt"])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_caption_eval(str(tmp_path / "nope.json"), results)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": [{"image_id": 1}]}))
    with pytest.raises(ValueError, match="bad.json"):
        coco_caption_eval(str(bad), results)
