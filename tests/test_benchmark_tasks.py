"""Benchmark datasets from their released layouts, the benchmark tasks with scripted / stand-in models,
and evaluate.py end to end (tiny MiniGPT4-Qwen) on tiny MME / MMBench / POPE / ScienceQA folders."""
import base64
import csv
import importlib.util
import io
import json
import os
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from lavis_lite.common.registry import registry
from lavis_lite.tasks.metrics import mmbench_eval
from lavis_lite.tasks.metrics.mme_eval import mme_scores
from lavis_lite.tasks.metrics.pope_eval import pope_scores
from lavis_lite.tasks.metrics.scienceqa_eval import scienceqa_scores

sys.path.insert(0, os.path.dirname(__file__))
import benchmark_fixtures as bf  # noqa: E402
from tiny_helpers import make_cfg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(name, storage, images=None, **extra):
    cfg = {"build_info": {"annotations": {"test": {"storage": storage}}},
           "vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 16}}, **extra}
    if images:
        cfg["build_info"]["images"] = {"storage": images}
    return registry.get_builder_class(name)(OmegaConf.create(cfg)).build_datasets()["test"]


# ---- datasets from the released layouts ---------------------------------------------------------
def test_mme_reads_both_folder_layouts(tmp_path):
    ds = build("mme", bf.write_mme(tmp_path))
    assert len(ds) == 8
    assert sorted({a["category"] for a in ds.annotation}) == ["artwork", "existence"]
    art = [a for a in ds.annotation if a["category"] == "artwork"]
    assert all("/artwork/images/" in a["image"] and a["image"].endswith(".jpg") for a in art)
    batch = ds.collater([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["question"][0] == "Is the image red? Please answer yes or no." and batch["answer"][:2] == ["Yes", "No"]
    assert len({a["question_id"] for a in ds.annotation}) == 8


def test_mme_reads_the_lmms_lab_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    table = pa.table({"question_id": ["code_reasoning/0020.png"] * 2,
                      "image": [{"bytes": buf.getvalue(), "path": None}] * 2,
                      "question": ["Is it red? Please answer yes or no.", "Is it blue? Please answer yes or no."],
                      "answer": ["Yes", "No"], "category": ["code_reasoning"] * 2})
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(table, path)
    ds = build("mme", str(path))
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 16, 16)
    assert {a["image_name"] for a in ds.annotation} == {"code_reasoning/0020.png"}


def test_mme_reads_the_vlmevalkit_tsv(tmp_path):
    path = tmp_path / "MME.tsv"
    image = base64.b64encode(bf._png("red")).decode()
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "answer", "category", "image_path"])
        w.writerow([0, image, "Is it red? Please answer yes or no.", "Yes", "color", "color/000.png"])
        w.writerow([1, image, "Is it blue? Please answer yes or no.", "No", "color", "color/000.png"])
    ds = build("mme", str(path))
    assert [a["answer"] for a in ds.annotation] == ["Yes", "No"] and ds[1]["image"].shape == (3, 16, 16)
    assert {a["image_name"] for a in ds.annotation} == {"color/000.png"}  # the two questions of one image


def test_mme_bad_line_names_file_and_missing_folder_names_layout(tmp_path):
    root = bf.write_mme(tmp_path)
    with open(os.path.join(root, "existence", "0000.txt"), "a") as f:
        f.write("a line without a tab\n")
    with pytest.raises(Exception, match=r"0000\.txt line 3"):
        build("mme", root)
    with pytest.raises(FileNotFoundError, match="questions_answers_YES_NO"):
        build("mme", str(tmp_path / "nowhere"))


def test_mmbench_expands_circular_variants(tmp_path):
    ds = build("mmbench", bf.write_mmbench(tmp_path))
    assert len(ds) == 5  # 3 options + 2 options
    q0 = [a for a in ds.annotation if a["g_index"] == 0]
    assert [a["options"]["A"] for a in q0] == ["red", "blue", "green"]
    assert [a["answer"] for a in q0] == ["A", "C", "B"]
    assert all(a["options"][a["answer"]] == "red" for a in q0)
    assert q0[0]["hint"] == "A plain square." and q0[0]["l2_category"] == "perception"
    one = [a for a in ds.annotation if a["g_index"] == 1][0]
    assert one["hint"] is None and set(one["options"]) == {"A", "B"}
    assert ds[0]["image"].shape == (3, 16, 16)
    flat = build("mmbench", bf.write_mmbench(tmp_path), dataset_options={"circular": False})
    assert len(flat) == 2


def test_mmbench_keeps_released_circular_copies(tmp_path):
    path = tmp_path / "legacy.tsv"
    image = base64.b64encode(bf._png("red")).decode()
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "hint", "A", "B", "answer", "category", "l2-category", "image"])
        w.writerow([7, "Q?", "", "x", "y", "A", "c", "l2", image])
        w.writerow([1000007, "Q?", "", "y", "x", "B", "c", "l2", "7"])  # image given as the row's index
    ds = build("mmbench", str(path))
    assert [(a["g_index"], a["shift"], a["answer"]) for a in ds.annotation] == [(7, 0, "A"), (7, 1, "B")]
    assert ds[1]["image"].shape == (3, 16, 16)


def test_pope_tags_each_split(tmp_path):
    files, images = bf.write_pope(tmp_path)
    ds = build("pope", files, images=images)
    assert len(ds) == 12
    assert sorted({a["pope_split"] for a in ds.annotation}) == ["adversarial", "popular", "random"]
    assert len({a["instance_id"] for a in ds.annotation}) == 12  # question ids repeat across splits
    assert ds[0]["question"] == "Is there a dog in the image?" and ds[0]["label"] == "yes"
    as_list = tmp_path / "coco_pope_popular_list.json"  # a repack as one JSON list
    as_list.write_text(json.dumps([{"question_id": 9, "image": "COCO_val2014_000000000000.jpg",
                                    "text": "Is there a cat in the image?", "label": "no"}]))
    one = build("pope", [str(as_list)], images=images)
    assert one.annotation[0]["pope_split"] == "popular" and one.annotation[0]["instance_id"] == "popular/9"


def test_scienceqa_img_keeps_test_problems_with_images(tmp_path):
    root = bf.write_scienceqa(tmp_path)
    ds = build("scienceqa", root, dataset_options={"images_only": True})
    assert [a["pid"] for a in ds.annotation] == ["1", "2"]
    assert ds.annotation[1]["choices"] == ["ant", "whale", "cat"] and ds.annotation[1]["answer"] == 1
    train = build("scienceqa", root, dataset_options={"pid_split": "train"})
    assert [a["pid"] for a in train.annotation] == ["4"]
    with pytest.raises(Exception, match="no image"):
        build("scienceqa", root, dataset_options={"images_only": False})


# ---- tasks with scripted / stand-in models ------------------------------------------------------
class Scripted(torch.nn.Module):
    """Replies computed from the prompt; remembers the prompts."""

    def __init__(self, reply):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.reply, self.prompts = reply, []

    @property
    def device(self):
        return self.weight.device

    def generate(self, samples, **kwargs):
        self.prompts.extend(samples["prompt"])
        return [self.reply(p) for p in samples["prompt"]]


def _run(task, model, dataset, split="test", batch_size=2):
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collater)
    records = task.evaluation(model, loader)
    return records, task.after_evaluation(records, split, epoch=0)


def test_mmbench_task_circular_end_to_end_with_scripted_replies(tmp_path, result_dir):
    ds = build("mmbench", bf.write_mmbench(tmp_path))
    task = registry.get_task_class("mmbench").setup_task(make_cfg())
    # always "B": question 1 (answer B at shift 0) is right at shift 0 only -> fails CircularEval
    model = Scripted(lambda p: "B. the second one")
    _, metrics = _run(task, model, ds)
    assert model.prompts[0].startswith("Hint: A plain square.\nQuestion: What colour is the image?\nOptions:\nA. red\n")
    assert metrics["overall"] == 0.0 and metrics["vanilla"] == 50.0 and metrics["n_variants"] == 5
    model = Scripted(lambda p: next(line[0] for line in p.splitlines() if line.endswith(". red") or
                                    line.endswith(". circle")))
    task = registry.get_task_class("mmbench").setup_task(make_cfg(mmbench_prompt_style="llava"))
    _, metrics = _run(task, model, ds)
    assert metrics["overall"] == 100.0
    assert model.prompts[0].endswith("Answer with the option's letter from the given choices directly.")


class RecordsDataset(torch.utils.data.Dataset):
    """An eval split of parsed records (as the zoo's VQA datasets hold them); samples carry ``fields``."""

    def __init__(self, records, fields):
        self.annotation, self.fields = records, fields

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, i):
        rec = self.annotation[i]
        return {"image": torch.zeros(3, 4, 4), "text_input": rec["question"], "question_id": rec["question_id"],
                "instance_id": str(i), **{k: rec[k] for k in self.fields}}

    def collater(self, batch):
        out = {"image": torch.stack([b["image"] for b in batch])}
        out.update({k: [b[k] for b in batch] for k in batch[0] if k != "image"})
        return out


def test_gqa_task_normalises_predictions(tmp_path, result_dir):
    from lavis_lite.datasets.datasets.vqa_datasets import VQAEvalDataset
    ann = tmp_path / "testdev.json"
    ann.write_text(json.dumps([{"question_id": "q1", "image": "x.png", "question": "What is it?", "answer": "table"},
                               {"question_id": "q2", "image": "x.png", "question": "Is it red?", "answer": "yes"}]))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    proc = registry.get_processor_class("blip2_image_eval").from_config(OmegaConf.create({"image_size": 16}))
    ds = VQAEvalDataset(vis_processor=proc, vis_root=str(tmp_path), ann_paths=[str(ann)])
    replies = {"What is it?": "The table.", "Is it red?": "No"}
    model = Scripted(lambda p: replies[p.split("\n")[0]])
    task = registry.get_task_class("gqa").setup_task(make_cfg())
    m = _run(task, model, ds)[1]
    assert m["accuracy"] == 50.0 and "open" not in m  # gold answers from the parsed records, no types
    official = tmp_path / "testdev_balanced_questions.json"  # the official {qid: question} file
    official.write_text(json.dumps({
        "q1": {"question": "What is it?", "answer": "table", "isBalanced": True,
               "types": {"structural": "query", "semantic": "obj"}},
        "q2": {"question": "Is it red?", "answer": "yes", "isBalanced": True,
               "types": {"structural": "verify", "semantic": "attr"}}}))
    task = registry.get_task_class("gqa").setup_task(make_cfg(gqa_questions_files={"test": str(official)}))
    m = _run(task, model, ds)[1]
    assert m["accuracy"] == 50.0 and m["open"] == 100.0 and m["binary"] == 0.0
    assert m["per_semantic_type"] == {"attr": 0.0, "obj": 100.0}
    task = registry.get_task_class("gqa").setup_task(make_cfg(gqa_normalization="none"))
    assert _run(task, model, ds)[1]["accuracy"] == 0.0  # "The table." != "table"


def test_aokvqa_task_direct_and_multiple_choice(result_dir):
    records = [
        {"question_id": "a", "question": "What animal?", "choices": ["dog", "cat", "cow", "pig"],
         "correct_choice_idx": 1, "direct_answers": ["cat"] * 9 + ["kitten"], "difficult_direct_answer": False},
        {"question_id": "b", "question": "What colour?", "choices": ["red", "blue", "gold", "tan"],
         "correct_choice_idx": 0, "direct_answers": ["red"] * 2 + ["crimson"] * 8, "difficult_direct_answer": False},
        {"question_id": "c", "question": "Hard one?", "choices": ["x", "y", "z", "w"],
         "correct_choice_idx": 3, "direct_answers": ["w"] * 10, "difficult_direct_answer": True}]
    ds = RecordsDataset(records, fields=("choices",))
    da = registry.get_task_class("aok_vqa").setup_task(make_cfg())
    replies = {"What animal?": "Cat.", "What colour?": "red", "Hard one?": "w"}
    _, m = _run(da, Scripted(lambda p: replies[p.split("\n")[0]]), ds, split="val")
    assert m["da_accuracy"] == pytest.approx(100 * (1 + 2 / 3) / 2) and m["n"] == 2  # c is difficult: not scored
    # VQAv2 scorer: "cat." normalised -> cat, 9/10 subsets have >= 3 "cat" -> 1; "red": 10 leave-one-out
    # subsets, 8 keep both "red" (2/3), 2 keep one (1/3) -> 0.6
    assert m["vqav2_accuracy"] == pytest.approx(100 * (1 + 0.6) / 2)
    mc = registry.get_task_class("aok_vqa").setup_task(make_cfg(aokvqa_mode="multiple_choice"))
    replies = {"What animal?": "B", "What colour?": "I would say blue", "Hard one?": "no idea"}
    model = Scripted(lambda p: replies[p.split("\n")[0]])
    _, m = _run(mc, model, RecordsDataset(records, fields=()), split="val")  # choices read from the records
    assert m["mc_accuracy"] == pytest.approx(100 / 3) and m["n"] == 3  # cat right; blue wrong; unmatched wrong
    assert m["n_unmatched"] == 1 and m["n_missing"] == 0
    assert model.prompts[0] == ("What animal?\nA. dog\nB. cat\nC. cow\nD. pig\n"
                                "Answer with the option's letter from the given choices directly.")


def test_snli_ve_generative_and_classifier(result_dir):
    class DS(torch.utils.data.Dataset):
        annotation = [{"instance_id": str(i)} for i in range(3)]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 4, 4), "text_input": f"sentence {i}", "label": [2, 0, 1][i],
                    "instance_id": str(i)}

        def collater(self, b):
            return {"image": torch.stack([x["image"] for x in b]), "text_input": [x["text_input"] for x in b],
                    "label": torch.tensor([x["label"] for x in b]), "instance_id": [x["instance_id"] for x in b]}

    task = registry.get_task_class("snli_ve").setup_task(make_cfg())
    replies = {"sentence 0": "Entailment.", "sentence 1": "It contradicts.", "sentence 2": "entailment"}
    model = Scripted(lambda p: replies[p.split('"')[1]])
    _, m = _run(task, model, DS())
    assert m["accuracy"] == pytest.approx(200 / 3) and m["per_label"]["neutral"] == 0.0

    class Classifier(Scripted):
        def predict(self, samples):  # LAVIS's classification API: always "neutral"
            logits = torch.tensor([[0.0, 1.0, 0.0]]).repeat(len(samples["label"]), 1)
            return {"predictions": logits, "targets": samples["label"]}

    _, m = _run(task, Classifier(None), DS())
    assert m["accuracy"] == pytest.approx(100 / 3)


class TinyZeroShot(torch.nn.Module):
    """Stand-in with the CLIP zero-shot API on real tensors: a text's embedding is the one-hot of the
    class name it contains plus a shared component; an image's embedding is its first pixels."""

    def __init__(self, classnames):
        super().__init__()
        self.names = list(classnames)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.templates_seen = None

    @property
    def device(self):
        return self.weight.device

    def encode_text(self, texts):
        out = torch.zeros(len(texts), len(self.names) + 1)
        for i, t in enumerate(texts):
            out[i, [k for k, n in enumerate(self.names) if f" {n}" in f" {t}"][0]] = 1.0
            out[i, -1] = 0.1
        return out

    def zero_shot_classifier(self, classnames, templates):
        self.templates_seen = list(templates)
        weights = []
        for name in classnames:
            emb = torch.nn.functional.normalize(self.encode_text([t.format(name) for t in templates]), dim=-1)
            weights.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
        return torch.stack(weights, dim=1)  # [dim, n_classes] as LAVIS / open_clip

    def encode_image(self, image):
        return image.flatten(1)[:, :len(self.names) + 1]


def test_zero_shot_classification_top1_top5_with_the_prompt_ensemble(result_dir):
    names = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray", "stingray"]
    feat = torch.tensor([5.0, 4, 3, 2, 1, 0, 0, 0])  # ranks classes 0 > 1 > 2 > 3 > 4 > (5, 6)
    labels = [0, 1, 4, 6]                              # top-1 hit; top-5 hits x3; miss

    class DS(torch.utils.data.Dataset):
        classnames = names
        annotation = labels

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            img = torch.zeros(3, 4, 4)
            img.view(-1)[:8] = feat
            return {"image": img, "label": labels[i], "instance_id": str(i)}

        def collater(self, b):
            return {"image": torch.stack([x["image"] for x in b]), "label": torch.tensor([x["label"] for x in b]),
                    "instance_id": [x["instance_id"] for x in b]}

    task = registry.get_task_class("zero_shot_classification").setup_task(make_cfg())
    model = TinyZeroShot(names)
    _, m = _run(task, model, DS())
    assert m["top1"] == 25.0 and m["top5"] == 75.0 and m["n"] == 4
    assert len(model.templates_seen) == 80 and model.templates_seen[0] == "a bad photo of a {}."


def test_nocaps_task_reports_domains(tmp_path, result_dir):
    gt = tmp_path / "nocaps_val_4500_captions.json"
    gt.write_text(json.dumps({"images": [{"id": 0, "domain": "in-domain"}, {"id": 1, "domain": "out-domain"}],
                              "annotations": [{"image_id": 0, "caption": "a dog on grass", "id": 0},
                                              {"image_id": 1, "caption": "a red tractor", "id": 1}]}))
    task = registry.get_task_class("nocaps").setup_task(make_cfg(caption_gt_files={"val": str(gt)},
                                                                 caption_metrics=["bleu", "cider"]))
    m = task.compute_metrics([{"image_id": 0, "caption": "a dog on grass"}, {"image_id": 1, "caption": "a tractor"}],
                             "val")
    assert set(m["per_domain"]) == {"overall", "in-domain", "out-domain"}
    assert m["per_domain"]["in-domain"]["Bleu_1"] == pytest.approx(1.0)
    assert m["agg_metrics"] == m["CIDEr"] == m["per_domain"]["overall"]["CIDEr"]
    assert task.compute_metrics([{"image_id": 0, "caption": "x"}], "test")["scored"] is False


# ---- evaluate.py end to end ----------------------------------------------------------------
def _evaluate(bench, tmp_path, monkeypatch, reply):
    """Run projects/minigpt4qwen/eval_<bench>.yaml with a tiny random-init model; ``reply(prompt)``
    replaces the generated text after the real generate() ran (so the scores are hand-computable)."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
    real = Minigpt4Qwen.generate
    prompts = []

    def scripted(self, samples, **kwargs):
        out = real(self, samples, **kwargs)
        assert len(out) == len(samples["prompt"])
        prompts.extend(samples["prompt"])
        return [reply(p) for p in samples["prompt"]]

    monkeypatch.setattr(Minigpt4Qwen, "generate", scripted)
    data = tmp_path / "data"
    data.mkdir()
    if bench == "pope":
        files, images = bf.write_pope(data)
        options = [f"datasets.pope.build_info.annotations.test.storage=[{','.join(files)}]",
                   f"datasets.pope.build_info.images.storage={images}"]
    else:
        path = {"mme": bf.write_mme, "mmbench": bf.write_mmbench, "scienceqa": bf.write_scienceqa}[bench](data)
        options = [f"datasets.{bench}.build_info.annotations.test.storage={path}"]
    cfg = OmegaConf.load(os.path.join(ROOT, "projects", "minigpt4qwen", f"eval_{bench}.yaml"))
    cfg.model = {"arch": "minigpt4qwen", "model_type": "tiny"}  # the recipe with the tiny model
    OmegaConf.save(cfg, tmp_path / "run.yaml")
    spec = importlib.util.spec_from_file_location("_lavis_lite_evaluate", os.path.join(ROOT, "evaluate.py"))
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    out = tmp_path / "out"
    metrics = evaluate.main(["--cfg-path", str(tmp_path / "run.yaml"), "--job-id", bench, "--options",
                             "run.device=cpu", "run.amp=false", "run.num_workers=0", "run.batch_size_eval=4",
                             f"run.output_dir={out}", "run.progress_bar=false", "run.max_new_tokens=3",
                             f"datasets.{bench}.vis_processor.eval.image_size=32", *options])["test"]
    result_dir = out / bench / "result"
    on_disk = json.loads((result_dir / "test_metrics.json").read_text())
    records = json.loads((result_dir / f"test_{bench}_result.json").read_text())
    return metrics, on_disk, records, prompts


@pytest.mark.slow
def test_evaluate_mme(tmp_path, monkeypatch):
    # "red" images: both questions right; "blue" images: "Is the image blue?" answered No -> acc 3/4, acc+ 1/2
    metrics, on_disk, records, prompts = _evaluate("mme", tmp_path, monkeypatch,
                                                   lambda p: "Yes" if "red" in p else "No, it is not.")
    assert len(records) == 8 and prompts[0] == "Is the image red? Please answer yes or no."
    for task in ("existence", "artwork"):
        assert metrics["per_subtask"][task]["acc"] == 75.0 and metrics["per_subtask"][task]["acc_plus"] == 50.0
    assert metrics["perception"] == 250.0 == metrics["agg_metrics"] == on_disk["perception"]
    assert mme_scores([{"category": r["category"], "image": r["image_name"], "answer": r["answer"],
                        "prediction": r["prediction"]} for r in records])["total"] == 250.0


@pytest.mark.slow
def test_evaluate_mmbench(tmp_path, monkeypatch):
    metrics, on_disk, records, prompts = _evaluate("mmbench", tmp_path, monkeypatch, lambda p: "B")
    assert len(records) == 5 and {r["choice"] for r in records} == {"B"}
    assert metrics["overall"] == 0.0 and metrics["vanilla"] == 50.0 and on_disk["vanilla"] == 50.0
    assert mmbench_eval.circular_scores(records)["overall"] == metrics["overall"]
    assert "Please select the correct answer from the options above." in prompts[0]


@pytest.mark.slow
def test_evaluate_pope(tmp_path, monkeypatch):
    # q1 dog/yes -> yes (TP); q2 cat/yes -> no (FN); q3 dog/no -> yes (FP); q4 cat/no -> no (TN)
    metrics, on_disk, records, _ = _evaluate("pope", tmp_path, monkeypatch,
                                             lambda p: "Yes, there is a dog." if "dog" in p else "There is no cat.")
    assert len(records) == 12
    for split in ("random", "popular", "adversarial"):
        m = metrics["per_split"][split]
        assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (1, 1, 1, 1) and m["f1"] == 0.5
    assert metrics["accuracy"] == 0.5 == on_disk["accuracy"]
    assert pope_scores([{"split": r["pope_split"], "label": r["label"], "prediction": r["prediction"]}
                        for r in records])["f1"] == metrics["f1"]


@pytest.mark.slow
def test_evaluate_scienceqa(tmp_path, monkeypatch):
    metrics, on_disk, records, prompts = _evaluate("scienceqa", tmp_path, monkeypatch, lambda p: "A")
    assert sorted(r["pid"] for r in records) == ["1", "2"]  # text-only and train problems left out
    assert metrics["accuracy"] == 50.0 == on_disk["accuracy"] == scienceqa_scores(records)["accuracy"]
    assert ("Context: Look.\nWhich colour is shown?\nA. red\nB. blue\n"
            "Answer with the option's letter from the given choices directly.") in prompts
