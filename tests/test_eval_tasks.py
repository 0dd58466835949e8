"""Evaluation tasks with a scripted model: records, merging, metric files, and a 2-process run."""
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lavis_lite.tasks.captioning import CaptionTask
from lavis_lite.tasks.instruction_eval import (InstructionEvalTask, contains_match, exact_match,
                                               split_instruction_batch)
from lavis_lite.tasks.metrics.caption_eval import coco_caption_eval
from lavis_lite.tasks.metrics.vqa_eval import vqa_accuracy
from lavis_lite.tasks.vqa import VQATask, clean_answer
from tiny_helpers import make_cfg


class ScriptedModel(torch.nn.Module):
    """Answers from a table keyed by the batch's ids; records what generate() received."""

    def __init__(self, answers):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.answers, self.calls = answers, []

    @property
    def device(self):
        return self.weight.device

    def generate(self, samples, **kwargs):
        self.calls.append({"samples": samples, "kwargs": kwargs})
        if "question_id" in samples:
            keys = samples["question_id"]
        elif "image_id" in samples:
            keys = samples["image_id"]
        else:
            keys = samples["instance_id"]
        return [self.answers[k] for k in keys]

    def forward(self, samples):
        # loss = 0.1 * (number of characters of the first reference) ; one token per word of the answers
        conv = samples["conversations"]
        assert len(conv) == 1, "instruction_eval computes the loss per sample"
        words = sum(len(t["value"].split()) for t in conv[0] if t["from"] == "gpt")
        return {"loss": torch.tensor(0.1 * len(conv[0][1]["value"])), "n_tokens": words, "n_correct": words - 1}


class ListDataset(Dataset):
    def __init__(self, items, collate, **attrs):
        self.annotation, self._collate = items, collate
        for k, v in attrs.items():
            setattr(self, k, v)

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, i):
        return self.annotation[i]

    def collater(self, batch):
        return self._collate(batch)


# ---- captioning -------------------------------------------------------------------------------
def _caption_collate(batch):
    return {"image": torch.zeros(len(batch), 3, 4, 4), "image_id": [b["image_id"] for b in batch],
            "instance_id": [b["instance_id"] for b in batch]}


def test_captioning_task_metrics_equal_our_coco_caption_eval_on_its_records(tmp_path, result_dir):
    """The task scores its merged records exactly as lavis_lite.tasks.metrics.caption_eval.coco_caption_eval does (that
    scorer itself is compared with pycocoevalcap in tests/test_caption_metric.py)."""
    refs = {0: ["a red circle on a white background.", "a picture of a red circle."],
            1: ["a blue square on a black background.", "a picture of a blue square."],
            2: ["two green triangles on a gray background.", "a picture of two green triangles."]}
    gt_file = tmp_path / "test_gt.json"
    gt_file.write_text(json.dumps({"images": [{"id": i} for i in refs], "annotations": [
        {"image_id": i, "id": 10 * i + j, "caption": c} for i, cs in refs.items() for j, c in enumerate(cs)]}))
    answers = {0: "a red circle on a white background.", 1: "a blue square on a gray background.",
               2: "green triangles"}
    items = [{"image_id": i, "instance_id": str(i)} for i in refs]
    loader = DataLoader(ListDataset(items, _caption_collate, gt_path=str(gt_file)), batch_size=2,
                        collate_fn=_caption_collate)
    task = CaptionTask.setup_task(make_cfg(prompt="Caption it.", num_beams=3, max_len=12,
                                           caption_metrics=["bleu", "rouge_l", "cider"]))
    model = ScriptedModel(answers)
    records = task.evaluation(model, loader)
    assert [r["image_id"] for r in records] == [0, 1, 2]
    call = model.calls[0]
    assert call["samples"]["prompt"] == ["Caption it."] * 2 and call["samples"]["n_images"] == [1, 1]
    assert call["kwargs"]["num_beams"] == 3 and call["kwargs"]["max_new_tokens"] == 12

    metrics = task.after_evaluation(records, "test", epoch=0)
    expected = coco_caption_eval(str(gt_file), [{"image_id": i, "caption": c} for i, c in answers.items()],
                                 metrics=["bleu", "rouge_l", "cider"])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value)
    assert metrics["agg_metrics"] == pytest.approx(expected["CIDEr"] + expected["Bleu_4"])
    on_disk = json.loads((result_dir / "test_metrics.json").read_text())
    assert on_disk["CIDEr"] == pytest.approx(expected["CIDEr"]) and on_disk["n_records"] == 3
    assert len(json.loads((result_dir / "test_caption_result.json").read_text())) == 3


def test_captioning_finds_gt_next_to_annotation_and_errors_without(tmp_path, result_dir):
    task = CaptionTask.setup_task(make_cfg())
    (tmp_path / "val.json").write_text("[]")
    (tmp_path / "val_gt.json").write_text("{}")
    task.prepare_references(SimpleNamespace(ann_paths=[str(tmp_path / "val.json")]))
    assert task.ground_truth_files("val") == [str(tmp_path / "val_gt.json")]
    # several datasets in one split (the runner's ConcatDataset): every ground-truth file, once
    a, b = str(tmp_path / "a_gt.json"), str(tmp_path / "b_gt.json")
    for p in (a, b):
        open(p, "w").write("{}")
    parts = [SimpleNamespace(gt_path=a), SimpleNamespace(gt_path=b), SimpleNamespace(gt_path=a)]
    task.prepare_references(SimpleNamespace(datasets=parts))
    assert task.ground_truth_files("val") == [a, b]
    # a missing ground-truth file stops the evaluation before any generation
    with pytest.raises(FileNotFoundError, match="missing_gt.json"):
        task.prepare_references(SimpleNamespace(gt_path=str(tmp_path / "missing_gt.json")))
    task.prepare_references(None)
    with pytest.raises(FileNotFoundError, match="caption_gt_files.val"):
        task.ground_truth_files("val")


# ---- vqa --------------------------------------------------------------------------------------
def _vqa_collate(batch):
    return {"image": torch.zeros(len(batch), 3, 4, 4), "text_input": [b["question"] for b in batch],
            "question_id": [b["question_id"] for b in batch], "instance_id": [b["instance_id"] for b in batch]}


def _vqa_files(tmp_path):
    records = [
        {"question_id": 1, "question": "What colour?", "answer": ["red"] * 2 + ["blue"] * 8, "answer_type": "other"},
        {"question_id": 2, "question": "How many?", "answer": ["two"] * 5 + ["2"] * 5, "answer_type": "number"},
        {"question_id": 3, "question": "Is it?", "answer": ["yes"] * 10, "answer_type": "yes/no"},
    ]
    path = tmp_path / "vqa_val.json"
    path.write_text(json.dumps(records))
    items = [{"question": r["question"], "question_id": r["question_id"], "instance_id": str(i)}
             for i, r in enumerate(records)]
    return path, items


def test_vqa_task_official_accuracy(tmp_path, result_dir):
    path, items = _vqa_files(tmp_path)
    answers = {1: "Red.", 2: "Two\nbecause I counted", 3: "no"}
    loader = DataLoader(ListDataset(items, _vqa_collate, ann_paths=[str(path)]), batch_size=2,
                        collate_fn=_vqa_collate)
    task = VQATask.setup_task(make_cfg(prompt="Q: {} A:"))
    model = ScriptedModel(answers)
    records = task.evaluation(model, loader)
    assert model.calls[0]["samples"]["prompt"] == ["Q: What colour? A:", "Q: How many? A:"]
    assert model.calls[0]["kwargs"]["max_new_tokens"] == 10
    assert [r["answer"] for r in records] == ["red", "two", "no"]
    metrics = task.after_evaluation(records, "val", epoch=1)
    expected = [0.6, 1.0, 0.0]  # hand-worked: 2 of 10 'red'; two == 2 after normalisation; wrong
    assert metrics["overall"] == pytest.approx(round(100 * sum(expected) / 3, 2))
    assert metrics["agg_metrics"] == metrics["overall"]
    assert metrics["per_answer_type"] == {"number": 100.0, "other": 60.0, "yes/no": 0.0}
    assert json.loads((result_dir / "val_metrics.json").read_text())["epoch"] == 1
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)


def test_vqa_official_annotation_file_gives_answer_types(tmp_path, result_dir):
    # The official v2_mscoco_*_annotations.json layout, named per split by run.vqa_annotation_files.
    official = {"annotations": [{"question_id": 7, "answer_type": "number", "question_type": "how many",
                                 "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(["2"] * 3 + ["3"] * 7)]}]}
    (tmp_path / "official.json").write_text(json.dumps(official))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"question_id": 7, "question": "How many?", "answer": ["2"]}]))
    items = [{"question": "How many?", "question_id": 7, "instance_id": "0"}]
    loader = DataLoader(ListDataset(items, _vqa_collate, ann_paths=[str(plain)]), batch_size=1, collate_fn=_vqa_collate)
    task = VQATask.setup_task(make_cfg(vqa_annotation_files={"val": str(tmp_path / "official.json")}))
    metrics = task.after_evaluation(task.evaluation(ScriptedModel({7: "2"}), loader), "val", 0)
    assert metrics["overall"] == 90.0 and metrics["per_answer_type"] == {"number": 90.0}


def test_vqa_prompt_needs_placeholder_and_clean_answer():
    with pytest.raises(ValueError, match="prompt"):
        VQATask.setup_task(make_cfg(prompt="no placeholder"))
    assert clean_answer("  Yes.\nIt is.") == "yes"
    assert clean_answer("") == ""


def test_vqa_without_answers_is_saved_not_scored(tmp_path, result_dir):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"question_id": 5, "question": "What?", "image": "x.png"}]))
    items = [{"question": "What?", "question_id": 5, "instance_id": "0"}]
    loader = DataLoader(ListDataset(items, _vqa_collate, ann_paths=[str(path)]), batch_size=1,
                        collate_fn=_vqa_collate)
    task = VQATask.setup_task(make_cfg())
    metrics = task.after_evaluation(task.evaluation(ScriptedModel({5: "cat"}), loader), "test", 0)
    assert metrics["scored"] is False and metrics["n"] == 1
    assert json.loads((result_dir / "test_vqa_result.json").read_text())[0]["answer"] == "cat"


# ---- instruction_eval -------------------------------------------------------------------------
def _conv(q, a, history=()):
    turns = []
    for hq, ha in history:
        turns += [{"from": "human", "value": hq}, {"from": "gpt", "value": ha}]
    return turns + [{"from": "human", "value": "<ImageHere> " + q}, {"from": "gpt", "value": a}]


def _instr_collate(batch):
    return {"image": torch.cat([torch.full((b["n"], 3, 4, 4), float(i)) for i, b in enumerate(batch)]),
            "n_images": [b["n"] for b in batch], "conversations": [b["conv"] for b in batch],
            "instance_id": [b["instance_id"] for b in batch], "question_type": [b["qt"] for b in batch]}


INSTR_ITEMS = [
    {"instance_id": "a", "qt": "colour", "n": 1, "conv": _conv("What colour is the shape?", "red")},
    {"instance_id": "b", "qt": "colour", "n": 1, "conv": _conv("What colour is the shape?", "blue")},
    {"instance_id": "c", "qt": "shape", "n": 2, "conv": _conv("What shape?", "circle", [("Colour?", "green")])},
    {"instance_id": "d", "qt": "describe", "n": 1, "conv": _conv("Describe.", "a red circle on a white background.")},
]
INSTR_ANSWERS = {"a": "Red.", "b": "It is blue", "c": "circles", "d": "A red circle on a white background"}


def test_instruction_eval_accuracy_loss_and_types(result_dir):
    loader = DataLoader(ListDataset(INSTR_ITEMS, _instr_collate), batch_size=3, collate_fn=_instr_collate)
    task = InstructionEvalTask.setup_task(make_cfg(max_new_tokens=5))
    model = ScriptedModel(INSTR_ANSWERS)
    records = task.evaluation(model, loader)
    # generation saw every turn but the last assistant answer
    sent = model.calls[0]["samples"]["conversations"]
    assert sent[2][-1] == {"from": "human", "value": "<ImageHere> What shape?"} and len(sent[2]) == 3
    assert model.calls[0]["samples"]["n_images"] == [1, 1, 2]
    assert [(r["exact"], r["contains"]) for r in records] == [(True, True), (False, True), (False, False), (True, True)]
    metrics = task.after_evaluation(records, "val", epoch=0)
    assert metrics["exact_acc"] == 50.0 and metrics["contains_acc"] == 75.0 and metrics["n"] == 4
    assert metrics["agg_metrics"] == 50.0
    assert metrics["per_question_type"]["colour"] == {"n": 2, "exact_acc": 50.0, "contains_acc": 100.0}
    # token-weighted loss: per sample loss 0.1*len(first answer), n_tokens = words of all answers
    per = [(0.1 * len("red"), 1), (0.1 * len("blue"), 1), (0.1 * len("green"), 2),
           (0.1 * len("a red circle on a white background."), 7)]
    assert metrics["loss"] == pytest.approx(sum(l * n for l, n in per) / sum(n for _, n in per))
    assert metrics["token_acc"] == pytest.approx(round(100 * (0 + 0 + 1 + 6) / 11, 2))


def test_instruction_matching_rules_and_split():
    assert exact_match("  RED!! ", "red") and not exact_match("red circle", "red")
    assert contains_match("The shape is red.", "red") and not contains_match("reddish", "red")
    assert not contains_match("anything", "...")
    batch = _instr_collate(INSTR_ITEMS[:3])
    singles = split_instruction_batch(batch)
    assert [s["image"].shape[0] for s in singles] == [1, 1, 2]
    assert torch.all(singles[2]["image"] == 2.0) and singles[1]["instance_id"] == ["b"]
    with pytest.raises(ValueError, match="agg_metric"):
        InstructionEvalTask.setup_task(make_cfg(agg_metric="bleu"))


def test_merge_drops_duplicate_records(result_dir):
    task = InstructionEvalTask.setup_task(make_cfg(compute_loss=False))
    model = ScriptedModel(INSTR_ANSWERS)
    loader = DataLoader(ListDataset(INSTR_ITEMS, _instr_collate), batch_size=2, collate_fn=_instr_collate)
    records = task.evaluation(model, loader)
    metrics = task.after_evaluation(records + records[:2], "val", epoch=0)  # sampler padding repeats
    assert metrics["n"] == 4 and "loss" not in metrics
    merged = json.loads((result_dir / "val_instruction_result.json").read_text())
    assert sorted(r["instance_id"] for r in merged) == ["a", "b", "c", "d"]


# ---- two processes ----------------------------------------------------------------------------
WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_eval_tasks import ScriptedModel, ListDataset, _vqa_collate, make_cfg
    from lavis_lite.common import dist_utils
    from lavis_lite.common.registry import registry
    from lavis_lite.tasks.vqa import VQATask

    dist_utils.init_distributed_mode()
    out = sys.argv[1]
    registry.register_path("result_dir", os.path.join(out, "result"))
    items = json.load(open(os.path.join(out, "items.json")))
    ds = ListDataset(items, _vqa_collate, ann_paths=[os.path.join(out, "ann.json")])
    sampler = DistributedSampler(ds, shuffle=False)  # pads 7 items to 8 with a repeat
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=_vqa_collate)
    answers = {int(k): v for k, v in json.load(open(os.path.join(out, "answers.json"))).items()}
    task = VQATask.setup_task(make_cfg())
    records = task.evaluation(ScriptedModel(answers), loader)
    metrics = task.after_evaluation(records, "val", epoch=0)
    # A scoring failure on rank 0 (a prediction without annotation) reaches every rank instead of a hang.
    records.append({"question_id": 999, "answer": "yes", "instance_id": "x"})
    try:
        task.after_evaluation(records, "bad", epoch=0)
        error = None
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    rank = dist_utils.get_rank()
    json.dump({"n_local": len(records) - 1, "metrics": metrics, "error": error},
              open(os.path.join(out, f"rank{rank}.json"), "w"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
''')


@pytest.mark.slow
def test_two_process_evaluation_merges_without_loss_or_duplication(tmp_path):
    n = 7
    ann = [{"question_id": 100 + i, "question": f"q{i}", "answer": ["yes"] * 10} for i in range(n)]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "items.json").write_text(json.dumps(
        [{"question": a["question"], "question_id": a["question_id"], "instance_id": str(i)} for i, a in enumerate(ann)]))
    answers = {100 + i: ("yes" if i < 4 else "no") for i in range(n)}
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "TEST_DIR": os.path.dirname(__file__), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["n_local"] for r in ranks] == [4, 4]  # 8 with the padding repeat
    merged = json.loads((tmp_path / "result" / "val_vqa_result.json").read_text())
    assert sorted(r["question_id"] for r in merged) == [100 + i for i in range(n)]
    for r in ranks:  # every rank got rank 0's metrics
        assert r["metrics"]["n"] == n and r["metrics"]["overall"] == pytest.approx(round(100 * 4 / 7, 2))
    assert "999" in ranks[0]["error"] and "999" in ranks[1]["error"] and "rank 0" in ranks[1]["error"]
