"""VQAv2 accuracy: normalisation edge cases and hand-worked leave-one-out averages."""
import pytest

from lavis_lite.tasks.metrics.vqa_eval import normalize_answer, vqa_accuracy, vqa_score


@pytest.mark.parametrize("raw, expected", [
    ("T-Shirt", "t shirt"),              # '-' not touching a space -> replaced by a space
    ("1,000", "1000"),                   # digit-comma-digit -> punctuation deleted
    ("Two Dogs!", "2 dogs"),             # number word + '!' at the end
    ("  The\tcat.\n", "cat"),            # whitespace, article, final period
    ("2.5", "2.5"),                      # a period before a digit stays
    ("isnt", "isn't"),                   # contraction restored
    ("dont know", "don't know"),
    ("a / b", "b"),                      # '/' touching spaces is deleted; 'a' is an article
    ("none", "0"),
    ("An apple, a pear", "apple pear"),  # ', ' touches a space -> deleted
    ("yes?", "yes"),
    ("(left)", "left"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_all_annotators_agree():
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("no", ["yes"] * 10) == 0.0


def test_two_of_ten_matching():
    # leave out a 'red' (2 subsets): 1 match -> 1/3 ; leave out a 'blue' (8 subsets): 2 -> 2/3
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)


def test_three_of_ten_matching():
    # leave out a 'red' (3): 2/3 ; leave out a 'blue' (7): 1 -> (2 + 7) / 10 = 0.9
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == pytest.approx(1.0)
    # one match: leave out that one -> 0, others -> 1/3: 9/30
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)


def test_normalisation_applies_when_annotators_disagree():
    gts = ["two"] * 5 + ["2"] * 5
    assert vqa_accuracy("Two.", gts) == 1.0
    assert vqa_accuracy("The dog", ["a dog"] * 3 + ["dog"] * 7) == 1.0
    assert vqa_accuracy("don't know", ["dont know"] * 5 + ["no"] * 5) == 1.0


def test_official_quirk_no_normalisation_when_annotators_agree():
    # The official script only normalises when the human answers differ.
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10, always_normalize=True) == 1.0
    # whitespace is always cleaned
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0


def test_official_answer_dicts_and_single_answer():
    assert vqa_accuracy("cat", [{"answer": "cat", "answer_id": i} for i in range(10)]) == 1.0
    # one reference: no leave-one-out subset exists -> exact match
    assert vqa_accuracy("cat", ["cat"]) == 1.0
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])
    with pytest.raises(TypeError):
        vqa_accuracy("cat", "cat")


def test_vqa_score_overall_and_per_type():
    annotations = {
        1: {"answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is"},
        2: {"answers": ["red"] * 2 + ["blue"] * 8, "answer_type": "other", "question_type": "what color"},
        3: {"answers": ["2"] * 10, "answer_type": "number", "question_type": "how many"},
        "4": {"answers": ["blue"] * 10, "answer_type": "other", "question_type": "what color"},
    }
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "red"},
               {"question_id": 3, "answer": "3"}, {"question_id": 4, "answer": "blue"}]
    out = vqa_score(results, annotations)
    assert out["n"] == 4
    assert out["overall"] == pytest.approx(round(100 * (1 + 0.6 + 0 + 1) / 4, 2))
    assert out["per_answer_type"] == {"number": 0.0, "other": 80.0, "yes/no": 100.0}
    assert out["per_question_type"]["what color"] == 80.0
    assert out["per_question"][2] == 60.0


def test_vqa_score_errors_name_the_question():
    ann = {1: {"answers": ["yes"]}}
    with pytest.raises(KeyError, match="7"):
        vqa_score([{"question_id": 7, "answer": "yes"}], ann)
    with pytest.raises(ValueError, match="twice"):
        vqa_score([{"question_id": 1, "answer": "yes"}] * 2, ann)
    with pytest.raises(KeyError, match="answer"):
        vqa_score([{"question_id": 1}], ann)
    out = vqa_score([{"question_id": 1, "answer": "yes"}], ann)
    assert "per_answer_type" not in out and out["overall"] == 100.0
