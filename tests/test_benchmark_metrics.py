"""Benchmark scorers on hand-computed cases from each benchmark's rules, edge cases included."""
import json

import numpy as np
import pytest
import torch

from lavis_lite.tasks.metrics import mmbench_eval
from lavis_lite.tasks.metrics.aokvqa_eval import aokvqa_scores, direct_answer_accuracy
from lavis_lite.tasks.metrics.classification_eval import OPENAI_IMAGENET_TEMPLATES, snli_ve_label
from lavis_lite.tasks.metrics.gqa_eval import gqa_scores, normalize_gqa_prediction
from lavis_lite.tasks.metrics.mme_eval import mme_scores, parse_mme_answer
from lavis_lite.tasks.metrics.nocaps_eval import nocaps_scores
from lavis_lite.tasks.metrics.pope_eval import pope_metrics, pope_scores, pope_yes_no
from lavis_lite.tasks.metrics.retrieval_eval import recall_at_k
from lavis_lite.tasks.metrics.scienceqa_eval import build_prompt as sqa_prompt
from lavis_lite.tasks.metrics.scienceqa_eval import extract_answer_index, scienceqa_scores


# ---- MME ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, label", [
    ("Yes", "yes"), ("no", "no"), ("Yes, there is a dog.", "yes"), ("No, it is not.", "no"),
    ("not sure", "no"),                # "no" inside the first 4 characters ("not ")
    ("There is no dog.", "other"),     # "no" only after the first 4 characters
    ("  yes", "other"),                # the first 4 characters are "  ye"
    ("I think yes", "other"),
])
def test_mme_answer_parsing(reply, label):
    assert parse_mme_answer(reply) == label


def _mme(category, image, answer, prediction):
    return {"category": category, "image": image, "answer": answer, "prediction": prediction}


def test_mme_acc_plus_needs_both_questions_of_an_image():
    records = [
        _mme("existence", "a", "Yes", "Yes"), _mme("existence", "a", "No", "No"),      # both right
        _mme("existence", "b", "Yes", "Yes"), _mme("existence", "b", "No", "Yes"),     # one right
        _mme("existence", "c", "Yes", "maybe"), _mme("existence", "c", "No", "No"),    # "other" + right
        _mme("code_reasoning", "d", "Yes", "No"), _mme("code_reasoning", "d", "No", "Yes"),
    ]
    out = mme_scores(records)
    ex = out["per_subtask"]["existence"]
    assert ex["acc"] == pytest.approx(100 * 4 / 6) and ex["acc_plus"] == pytest.approx(100 / 3)
    assert ex["score"] == pytest.approx(100 * (4 / 6 + 1 / 3)) and ex["n_other"] == 1 and ex["n_images"] == 3
    assert out["perception"] == pytest.approx(100.0) and out["cognition"] == 0.0
    assert out["total"] == pytest.approx(100.0)
    assert out["perception_subtasks"] == 1 and out["cognition_subtasks"] == 1


def test_mme_rejects_non_yes_no_ground_truth():
    with pytest.raises(ValueError, match="yes/no"):
        mme_scores([_mme("count", "a", "3", "3")])


# ---- MMBench --------------------------------------------------------------------------------
OPTS = {"A": "red apple", "B": "green pear", "C": "blue berry"}


@pytest.mark.parametrize("reply, choice", [
    ("B", "B"), ("(C) blue berry", "C"), ("The answer is A.", "A"),
    ("A or B", None),                        # two letters -> step 1 fails; no content -> None
    ("It is a green pear.", "B"),            # "a" is lower case: no letter; content of B
    ("green pear or blue berry", None),      # two contents
    ("Cannot determine the answer", "Z"),    # refusal
    ("nothing relevant", None),
])
def test_mmbench_answer_extraction(reply, choice):
    assert mmbench_eval.extract_choice(reply, OPTS) == choice


def test_mmbench_circular_variants_shift_options_and_answer():
    variants = mmbench_eval.circular_variants(OPTS, "B")
    assert variants[0] == (OPTS, "B")
    assert variants[1] == ({"A": "green pear", "B": "blue berry", "C": "red apple"}, "A")
    assert variants[2] == ({"A": "blue berry", "B": "red apple", "C": "green pear"}, "C")
    for options, answer in variants:
        assert options[answer] == "green pear"


def test_mmbench_circular_fails_when_one_shift_is_wrong():
    records = []
    for g, (cat, wrong_shift) in enumerate([("ocr", None), ("ocr", 2), ("count", None)]):
        for shift, (opts, ans) in enumerate(mmbench_eval.circular_variants(OPTS, "A")):
            choice = ("C" if ans != "C" else "A") if shift == wrong_shift else ans
            records.append({"g_index": g, "shift": shift, "answer": ans, "choice": choice, "category": cat})
    out = mmbench_eval.circular_scores(records)
    assert out["overall"] == pytest.approx(200 / 3)       # question 1 fails on shift 2 only
    assert out["vanilla"] == pytest.approx(100.0)         # every shift-0 answer is right
    assert out["per_category"] == {"count": 100.0, "ocr": 50.0}
    assert out["n_questions"] == 3 and out["n_variants"] == 9


def test_mmbench_prompts():
    assert mmbench_eval.build_prompt("Q?", {"A": "x", "B": "y"}, "H") == (
        "Hint: H\nQuestion: Q?\nOptions:\nA. x\nB. y\nPlease select the correct answer from the options above. \n")
    assert mmbench_eval.build_prompt("Q?", {"A": "x", "B": "y"}, None, style="llava") == (
        "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.")


# ---- POPE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, label", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog.", "no"),
    ("There is not a dog in the image.", "no"),
    ("Yes. There is no cat though.", "yes"),  # only the first sentence counts
    ("Nope", "yes"), ("", "yes"),            # neither "no" nor "not" as a word -> yes
    ("no, no", "no"),                        # the comma is dropped before splitting
    ("NO", "yes"),                           # only "No", "no", "not" are matched
])
def test_pope_yes_extraction(reply, label):
    assert pope_yes_no(reply) == label


def test_pope_metrics_hand_computed():
    m = pope_metrics(["yes", "yes", "no", "yes", "no"], ["yes", "no", "no", "yes", "yes"])
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)
    out = pope_scores([{"split": "random", "label": "yes", "prediction": "Yes"},
                       {"split": "adversarial", "label": "no", "prediction": "Yes it is"}])
    assert out["per_split"]["random"]["accuracy"] == 1.0 and out["per_split"]["adversarial"]["accuracy"] == 0.0
    assert out["accuracy"] == 0.5 and out["per_split"]["adversarial"]["precision"] == 0.0


# ---- ScienceQA ------------------------------------------------------------------------------
def test_scienceqa_prompt_and_extraction():
    assert sqa_prompt("Which?", ["x", "y"], "Look.") == (
        "Context: Look.\nWhich?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.")
    assert sqa_prompt("Which?", ["x", "y"], "") .startswith("Which?\nA. x")
    assert extract_answer_index("B", 2) == 1
    assert extract_answer_index("B. y", 2) == 1
    assert extract_answer_index("I think the answer is B.", 2) == -1         # case-sensitive "The answer is"
    assert extract_answer_index("The answer is B.", 2) == 1
    assert extract_answer_index("The answer is A. The answer is B.", 2) == -1  # two matches -> failed
    assert extract_answer_index("C", 2) == -1                                # beyond the problem's choices
    out = scienceqa_scores([{"prediction": "A", "answer": 0, "n_choices": 2, "grade": "grade3", "subject": "s"},
                            {"prediction": "xyz", "answer": 1, "n_choices": 3, "grade": "grade9", "subject": "s"}])
    assert out["accuracy"] == 50.0 and out["n_failed"] == 1 and out["per_grade"] == {"G1-6": 100.0, "G7-12": 0.0}


# ---- GQA ------------------------------------------------------------------------------------
def test_gqa_normalisation_modes():
    assert normalize_gqa_prediction("The Table.", "lavis") == "table"
    assert normalize_gqa_prediction("Two", "lavis") == "2"
    assert normalize_gqa_prediction("The Table.", "llava") == "the table"
    assert normalize_gqa_prediction("Table.", "none") == "Table."
    rows = [{"prediction": "Yes.", "answer": "yes", "structural": "verify", "semantic": "attr"},
            {"prediction": "the table", "answer": "table", "structural": "query", "semantic": "rel"},
            {"prediction": "left", "answer": "right", "structural": "query", "semantic": "rel"},
            {"prediction": "cat", "answer": "cat", "is_balanced": False}]   # not balanced: left out
    out = gqa_scores(rows)
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(200 / 3)
    assert out["binary"] == 100.0 and out["open"] == 50.0
    assert gqa_scores(rows, mode="llava")["accuracy"] == pytest.approx(100 / 3)  # "the table" != "table"
    assert gqa_scores(rows, mode="none")["accuracy"] == 0.0                      # "Yes." != "yes"


# ---- A-OKVQA --------------------------------------------------------------------------------
def test_aokvqa_direct_answer_and_multiple_choice():
    assert direct_answer_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(2 / 3)
    assert direct_answer_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0   # no leave-one-out: 4/3 -> 1
    questions = {
        "q1": {"choices": ["a", "b"], "correct_choice_idx": 1, "direct_answers": ["b"] * 10,
               "difficult_direct_answer": False},
        "q2": {"choices": ["c", "d"], "correct_choice_idx": 0, "direct_answers": ["c"] * 3 + ["d"] * 7,
               "difficult_direct_answer": True},
    }
    da = aokvqa_scores([{"question_id": "q1", "prediction": "b"}, {"question_id": "q2", "prediction": "x"}], questions)
    assert da == {"accuracy": 100.0, "n": 1, "n_missing": 0}   # the difficult q2 is not scored
    mc = aokvqa_scores([{"question_id": "q1", "prediction": "b"}], questions, multiple_choice=True)
    assert mc == {"accuracy": 50.0, "n": 2, "n_missing": 1}     # q2 missing scores 0


# ---- retrieval ties -------------------------------------------------------------------------
def _lavis_ranks(scores, positives):
    """LAVIS's RetrievalTask._report_metrics rank loop, restated."""
    ranks = np.zeros(scores.shape[0])
    for index, score in enumerate(scores):
        inds = np.argsort(score)[::-1]
        ranks[index] = min(np.where(inds == i)[0][0] for i in positives[index])
    return ranks


def test_retrieval_ties_argsort_order_vs_tie_aware():
    # image 0's right text (0) ties with text 1; argsort()[::-1] puts index 1 first -> rank 1 (miss at R@1);
    # image 1's right text (1) wins that tie -> rank 0. The tie-aware rank gives 0.5 to both (hits).
    s = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    img2txt, txt2img = [[0], [1], [2]], [0, 1, 2]
    assert list(np.argsort(s[0].numpy())[::-1][:2]) == [1, 0]
    lavis = recall_at_k(s, s.t(), img2txt, txt2img, ks=(1,))
    aware = recall_at_k(s, s.t(), img2txt, txt2img, ks=(1,), tie_mode="expected")
    assert lavis["txt_r1"] == pytest.approx(200 / 3) and aware["txt_r1"] == 100.0
    expected = 100.0 * (_lavis_ranks(s.numpy(), img2txt) < 1).mean()
    assert lavis["txt_r1"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="tie_mode"):
        recall_at_k(s, s.t(), img2txt, txt2img, tie_mode="random")


def test_retrieval_argsort_matches_lavis_loop_on_random_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, size=(7, 14)).astype(np.float32)  # many exact ties
    img2txt = [[2 * i, 2 * i + 1] for i in range(7)]
    txt2img = [t // 2 for t in range(14)]
    m = recall_at_k(torch.from_numpy(s), torch.from_numpy(s.T.copy()), img2txt, txt2img, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert m[f"txt_r{k}"] == pytest.approx(100.0 * (_lavis_ranks(s, img2txt) < k).mean())
        assert m[f"img_r{k}"] == pytest.approx(100.0 * (_lavis_ranks(s.T.copy(), [[i] for i in txt2img]) < k).mean())


# ---- SNLI-VE / ImageNet templates -----------------------------------------------------------
def test_snli_ve_label_extraction_and_templates():
    assert snli_ve_label("Entailment.") == "entailment"
    assert snli_ve_label("The image contradicts it") == "contradiction"
    assert snli_ve_label("neutral, not entailment") == "neutral"
    assert snli_ve_label("yes") is None
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(OPENAI_IMAGENET_TEMPLATES))
    assert all("{}" in t for t in OPENAI_IMAGENET_TEMPLATES)


# ---- NoCaps ---------------------------------------------------------------------------------
def test_nocaps_scores_each_domain_on_its_own_images(tmp_path):
    images = [{"id": 0, "domain": "in-domain"}, {"id": 1, "domain": "in-domain"},
              {"id": 2, "domain": "out-domain"}, {"id": 3, "domain": "near-domain"}]
    caps = {0: ["a dog on grass", "a dog playing"], 1: ["a cat on a sofa", "a sleeping cat"],
            2: ["a red tractor in a field", "a tractor"], 3: ["a bird on a branch", "a small bird"]}
    gt = tmp_path / "nocaps_val.json"
    gt.write_text(json.dumps({"images": images, "annotations": [{"image_id": i, "caption": c, "id": k}
                                                                for k, (i, cs) in enumerate(caps.items()) for c in cs]}))
    results = [{"image_id": 0, "caption": "a dog on grass"}, {"image_id": 1, "caption": "a dog on a sofa"},
               {"image_id": 2, "caption": "a red tractor"}, {"image_id": 3, "caption": "a bird"}]
    out = nocaps_scores(str(gt), results, metrics=["bleu", "cider"])
    assert set(out) == {"overall", "in-domain", "near-domain", "out-domain", "n_images"}
    assert out["n_images"] == {"in-domain": 2, "near-domain": 1, "out-domain": 1}
    from lavis_lite.tasks.metrics.caption_eval import score_captions
    refs = {str(k): v for k, v in caps.items()}
    in_only = score_captions(refs, {"0": "a dog on grass", "1": "a dog on a sofa"}, metrics=["bleu", "cider"])
    assert out["in-domain"]["CIDEr"] == pytest.approx(in_only["CIDEr"])
    assert out["in-domain"]["CIDEr"] != pytest.approx(out["overall"]["CIDEr"])
    with pytest.raises(KeyError, match="not an image"):
        nocaps_scores(str(gt), [{"image_id": 9, "caption": "x"}])
