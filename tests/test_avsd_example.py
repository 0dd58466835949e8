"""The AVSD-style example (projects/avsd_dialogue), built only through lavis_lite's extension points.

Unit level: generator, tokenizer, processors, datasets, collater, model (losses, generation
consistent with the forward pass), builder and task. End to end (slow): train.py trains a few
steps on CPU with the loss falling and evaluate.py scores the checkpoint.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import lavis_lite  # noqa: F401
from lavis_lite.common.plugins import import_plugin
from lavis_lite.common.registry import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(REPO, "projects", "avsd_dialogue")
PLUGIN = import_plugin(os.path.join(PROJECT, "avsd_plugin"))

from avsd_plugin.datasets import DialogueDataset, DialogueEvalDataset  # noqa: E402
from avsd_plugin.processors import IGNORE_INDEX, GPTDialogueProcessor, GPTVideoFeatureProcessor  # noqa: E402
from avsd_plugin.synthetic import write_synthetic_avsd  # noqa: E402
from avsd_plugin.tokenizer import build_dialogue_tokenizer, special_token_ids  # noqa: E402
from avsd_plugin.vocabulary import ATTRIBUTES, FEATURE_DIMS, QUESTIONS  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("avsd")
    paths = write_synthetic_avsd(str(root), n_train=24, n_val=6, n_test=6, seed=1)
    return str(root), paths


@pytest.fixture(scope="module")
def procs():
    return GPTVideoFeatureProcessor(), GPTDialogueProcessor(max_turns=3)


def test_components_are_registered_by_the_plugin():
    assert registry.get_builder_class("avsd_dialogue").__module__ == "avsd_plugin.builder"
    assert registry.get_processor_class("gpt_video_ft").__module__ == "avsd_plugin.processors"
    assert registry.get_processor_class("gpt_dialogue").__module__ == "avsd_plugin.processors"
    assert registry.get_model_class("gpt_dialogue").__module__ == "avsd_plugin.model"
    assert registry.get_task_class("dialogue").__module__ == "avsd_plugin.task"


def test_no_avsd_code_lives_in_lavis_lite():
    pattern = re.compile(r"avsd|gpt_dialogue|gpt_video_ft|GPTDialogue|DialogueDataset", re.IGNORECASE)
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(REPO, "lavis_lite")):
        for name in files:
            if name.endswith((".py", ".yaml", ".yml", ".json")):
                path = os.path.join(dirpath, name)
                with open(path, errors="ignore") as f:
                    if pattern.search(f.read()):
                        offenders.append(os.path.relpath(path, REPO))
    assert offenders == []
    for path in [os.path.join(REPO, "configs", "models"), os.path.join(REPO, "configs", "datasets")]:
        assert not any("avsd" in n or "gpt_dialogue" in n for n in os.listdir(path))


def test_synthetic_answers_are_determined_by_the_features(data):
    root, paths = data
    with open(paths["train"]) as f:
        dialogs = json.load(f)["dialogs"]
    assert len(dialogs) == 24
    answer_to_attr = {tmpl.split("{}")[0]: attr for attr, (_, tmpl) in QUESTIONS.items()}
    n_checked = 0
    for d in dialogs:
        feats = {s: np.load(os.path.join(root, "features", s, f"{d['image_id']}.npy")) for s in FEATURE_DIMS}
        for s, dim in FEATURE_DIMS.items():
            assert feats[s].dtype == np.float32 and feats[s].shape[1] == dim and 3 <= len(feats[s]) <= 6
        assert 2 <= len(d["dialog"]) <= 4
        for turn in d["dialog"]:
            prefix = max((p for p in answer_to_attr if turn["answer"].startswith(p)), key=len)
            attr = answer_to_attr[prefix]
            stream, offset, values = ATTRIBUTES[attr]
            block = feats[stream][:, offset:offset + len(values)].mean(0)
            assert turn["answer"].endswith(values[int(block.argmax())])
            assert values[int(block.argmax())] not in d["caption"] + d["summary"]
            n_checked += 1
    assert n_checked > 24


def test_local_tokenizer_roundtrip_and_special_tokens():
    tok = build_dialogue_tokenizer()
    ids = tok.encode("the person is holding a cup", add_special_tokens=False)
    assert len(ids) == 6  # whole words of the synthetic world are single tokens
    assert tok.decode(ids).strip() == "the person is holding a cup"
    unseen = tok.encode("Zebra 42!", add_special_tokens=False)  # byte pieces, no <unk>
    assert tok.decode(unseen).strip() == "Zebra 42!"
    special = special_token_ids(tok)
    assert len(set(special.values())) == 7 and max(special.values()) == len(tok) - 1


def test_video_processor_truncates_to_shortest_and_concatenates(tmp_path):
    for name, (n, dim, value) in {"rgb": (5, 3, 1.0), "audio": (3, 2, 2.0)}.items():
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "vid.npy", np.full((n, dim), value, dtype=np.float32))
    proc = registry.get_processor_class("gpt_video_ft").from_config(
        OmegaConf.create({"visual_ft": ["rgb"], "audio_ft": ["audio"]}))
    out = proc(str(tmp_path), "vid")
    assert out["video_fts"].shape == (3, 5)
    assert torch.equal(out["video_fts"][0], torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0]))
    assert out["token_type_ids"].tolist() == [proc.video_type_id] * 3
    with pytest.raises(FileNotFoundError, match=r"rgb.*other_vid"):
        proc(str(tmp_path), "other_vid")
    np.save(tmp_path / "rgb" / "flat.npy", np.zeros(4, dtype=np.float32))
    np.save(tmp_path / "audio" / "flat.npy", np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy.*\[frames, dim\]"):
        proc(str(tmp_path), "flat")
    fts, mask = proc.padding([torch.ones(2, 4), torch.ones(3, 4)])
    assert fts.shape == (2, 3, 4) and mask.tolist() == [[1, 1, 0], [1, 1, 1]] and fts[0, 2].abs().sum() == 0


ANN = {"image_id": "v", "caption": "a person is in a room", "summary": "a short video of a person",
       "dialog": [{"question": "what is the person doing ?", "answer": "the person is running"},
                  {"question": "what can you hear in the video ?", "answer": "i can hear music"}],
       "question": "what is the person holding ?", "answer": "the person is holding a cup"}


def test_dialogue_processor_segments_types_and_labels(procs):
    _, tp = procs
    ids = tp.ids
    out = tp(ANN)
    tokens = tp.tokenizer.convert_ids_to_tokens(out["input_ids"])
    assert tokens[0] == "<bos>" and tokens[-1] == "<eos>"
    assert tokens.count("<speaker1>") == 3 and tokens.count("<speaker2>") == 3
    # labels: only the answer tokens and <eos>
    supervised = out["labels"] != IGNORE_INDEX
    answer_ids = tp.encode(ANN["answer"]) + [ids["<eos>"]]
    assert out["labels"][supervised].tolist() == answer_ids
    assert out["input_ids"][supervised].tolist() == answer_ids
    # the prompt ends with the answer's <speaker2>; generation starts there
    assert out["input_ids"][out["prompt_length"] - 1] == ids["<speaker2>"]
    assert out["prompt_length"] == len(out["input_ids"]) - len(answer_ids)
    # token types: caption segment, then alternating speakers, answer = speaker2
    types = out["token_type_ids"].tolist()
    assert types[0] == ids["<cap>"] and set(types[out["prompt_length"] - 1:]) == {ids["<speaker2>"]}
    for tok, typ in zip(tokens, types):
        if tok in ("<speaker1>", "<speaker2>"):
            assert typ == ids[tok]
    # max_turns keeps the last turns only; use_caption False drops the caption
    short = GPTDialogueProcessor(max_turns=1, use_caption=False)(ANN)
    short_tokens = tp.tokenizer.convert_ids_to_tokens(short["input_ids"])
    assert short_tokens.count("<speaker1>") == 2 and "Ġroom" not in short_tokens
    assert "Ġrunning" not in short_tokens and "Ġmusic" in short_tokens
    # max_length cuts the oldest context but keeps <bos>, the question and the answer
    cut = GPTDialogueProcessor(max_length=20)(ANN)
    assert len(cut["input_ids"]) == 20 and cut["input_ids"][0] == ids["<bos>"]
    assert cut["labels"][cut["labels"] != IGNORE_INDEX].tolist() == answer_ids
    with pytest.raises(ValueError, match="max_length 12 cannot hold"):
        GPTDialogueProcessor(max_length=12)(ANN)  # <bos> + question (7) + answer (8) > 12


def test_datasets_expand_turns_and_check_records(data, procs, tmp_path):
    root, paths = data
    vp, tp = procs
    with open(paths["train"]) as f:
        dialogs = json.load(f)["dialogs"]
    train = DialogueDataset(vp, tp, os.path.join(root, "features"), [paths["train"]])
    assert len(train) == sum(len(d["dialog"]) for d in dialogs)
    first = dialogs[0]
    for k, turn in enumerate(first["dialog"]):
        ann = train.annotation[k]
        assert ann["question"] == turn["question"] and ann["dialog"] == first["dialog"][:k]
    val = DialogueEvalDataset(vp, tp, os.path.join(root, "features"), [paths["train"]])
    assert len(val) == len(dialogs)
    assert val.annotation[0]["dialog"] == first["dialog"][:-1]
    assert val.annotation[0]["answer"] == first["dialog"][-1]["answer"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dialogs": [first, {"image_id": "x", "dialog": [{"question": "q"}]}]}))
    with pytest.raises(ValueError, match=r"bad\.json.*record 1.*'x'.*turn 0"):
        DialogueDataset(vp, tp, root, [str(bad)])
    skipped = DialogueDataset(vp, tp, root, [str(bad)], on_error="skip", max_skip_fraction=0.5)
    assert len(skipped) == len(first["dialog"])  # the bad dialogue is skipped and counted
    bad.write_text(json.dumps([first]))
    with pytest.raises(ValueError, match=r"bad\.json.*'dialogs'"):
        DialogueDataset(vp, tp, root, [str(bad)])


def test_missing_feature_file_follows_on_error(data, procs, tmp_path):
    """A dialogue whose video features are missing: named error (file, record) under raise; under
    skip the next good sample stands in and the skip is counted (BaseDataset's policy)."""
    import shutil

    from lavis_lite.datasets.datasets.errors import DataError
    root, paths = data
    vp, tp = procs
    with open(paths["train"]) as f:
        dialogs = json.load(f)["dialogs"][:3]
    ann = tmp_path / "three.json"
    ann.write_text(json.dumps({"dialogs": dialogs}))
    features = tmp_path / "features"
    shutil.copytree(os.path.join(root, "features"), features)
    gone = dialogs[1]["image_id"]
    removed = [f for f in features.rglob(f"{gone}.npy")]
    assert removed
    for f in removed:
        f.unlink()
    strict = DialogueDataset(vp, tp, str(features), [str(ann)])
    first_bad = len(dialogs[0]["dialog"])
    assert strict.annotation[first_bad]["image_id"] == gone
    with pytest.raises(DataError, match=r"three\.json.*record 1.*" + gone):
        strict[first_bad]
    lenient = DialogueDataset(vp, tp, str(features), [str(ann)], on_error="skip", max_skip_fraction=0.9)
    sample = lenient[first_bad]
    assert sample["image_id"] == dialogs[2]["image_id"]  # the next good sample stands in
    assert lenient.skip_report()["skipped"] == len(dialogs[1]["dialog"])


def test_collater_pads_and_masks(data, procs):
    root, paths = data
    vp, tp = procs
    ds = DialogueDataset(vp, tp, os.path.join(root, "features"), [paths["train"]])
    items = [ds[i] for i in range(5)]
    batch = ds.collater(items)
    n_frames = [len(s["video_fts"]) for s in items]
    lengths = [len(s["input_ids"]) for s in items]
    assert batch["video_fts"].shape == (5, max(n_frames), 24)
    assert batch["video_mask"].sum(1).tolist() == n_frames
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"].shape == batch["labels"].shape == batch["token_type_ids"].shape
    for i, s in enumerate(items):
        assert torch.equal(batch["input_ids"][i, :lengths[i]], s["input_ids"])
        assert (batch["labels"][i, lengths[i]:] == IGNORE_INDEX).all()
        p = s["prompt_length"]  # prompts are left-padded: every row ends with <speaker2>
        assert torch.equal(batch["prompt_ids"][i, -p:], s["input_ids"][:p])
        assert batch["prompt_mask"][i].sum() == p and batch["prompt_mask"][i, -1] == 1
    assert batch["answer"] == [ds.annotation[i]["answer"] for i in range(5)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return registry.get_model_class("gpt_dialogue").from_pretrained("tiny")


def test_model_losses(model, data, procs):
    root, paths = data
    vp, tp = procs
    ds = DialogueDataset(vp, tp, os.path.join(root, "features"), [paths["train"]])
    batch = ds.collater([ds[i] for i in range(4)])
    model.eval()
    out = model(batch)
    assert out["n_tokens"] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert torch.isclose(out["loss"], out["lm_loss"] + out["video_loss"])
    # the MSE term by hand: frame t predicts frame t+1 where both are real
    with torch.no_grad():
        embeds, types, mask = model._joint_inputs(batch, "input_ids", "token_type_ids", "attention_mask")
        from avsd_plugin.model import positions_from_mask
        hidden = model.lm.transformer(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types,
                                      position_ids=positions_from_mask(mask)).last_hidden_state
        errs = []
        for i in range(4):
            t = int(batch["video_mask"][i].sum())
            pred = model.video_head(hidden[i, :t - 1])
            errs.append(((pred - batch["video_fts"][i, 1:t]) ** 2).mean(-1))
        assert torch.isclose(out["video_loss"], torch.cat(errs).mean(), atol=1e-5)
    # gradients reach the video projection through both losses
    model.train()
    model.zero_grad()
    model(batch)["loss"].backward()
    assert model.video_proj.weight.grad.abs().sum() > 0 and model.video_head.weight.grad.abs().sum() > 0
    model.zero_grad()
    bad = dict(batch, video_fts=batch["video_fts"][..., :10])
    with pytest.raises(ValueError, match="video_feature_dim"):
        model(bad)
    long = dict(batch, video_fts=batch["video_fts"].repeat(1, 80, 1), video_mask=batch["video_mask"].repeat(1, 80),
                video_token_type_ids=batch["video_token_type_ids"].repeat(1, 80))
    with pytest.raises(ValueError, match="n_positions"):
        model(long)


def test_generation_continues_the_training_sequence(data, procs):
    """Greedy generation's first token == argmax of the forward logits at the answer start,
    for every row of a batch with different video and prompt lengths (positions, token types
    and left padding agree between training and generation)."""
    root, paths = data
    vp, tp = procs
    torch.manual_seed(0)
    model = registry.get_model_class("gpt_dialogue").from_pretrained("tiny")
    with torch.no_grad():  # large weights: positions and token types change the argmax
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    ds = DialogueEvalDataset(vp, tp, os.path.join(root, "features"), [paths["val"]])
    batch = ds.collater([ds[i] for i in range(6)])
    assert len(set(batch["prompt_mask"].sum(1).tolist())) > 1 or len(set(batch["video_mask"].sum(1).tolist())) > 1
    model.eval()
    with torch.no_grad():
        embeds, types, mask = model._joint_inputs(batch, "input_ids", "token_type_ids", "attention_mask")
        from avsd_plugin.model import positions_from_mask
        hidden = model.lm.transformer(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types,
                                      position_ids=positions_from_mask(mask)).last_hidden_state
        logits = model.lm.lm_head(hidden[:, batch["video_fts"].shape[1]:])
        last = torch.stack([logits[i, ds[i]["prompt_length"] - 1] for i in range(6)])
        expected = last.argmax(-1).tolist()
        top2 = last.topk(2, dim=-1).values
        decisive = (top2[:, 0] - top2[:, 1] > 1e-4).tolist()  # ignore float-level ties
        out = model.lm.generate(inputs_embeds=torch.cat([model.video_proj(batch["video_fts"]),
                                                         model.lm.transformer.wte(batch["prompt_ids"])], 1),
                                attention_mask=torch.cat([batch["video_mask"], batch["prompt_mask"]], 1),
                                token_type_ids=torch.cat([batch["video_token_type_ids"],
                                                          batch["prompt_token_type_ids"]], 1),
                                max_new_tokens=1, do_sample=False, pad_token_id=model.ids["<pad>"])
    assert sum(decisive) >= 4
    assert [g for g, d in zip(out[:, 0].tolist(), decisive) if d] == [e for e, d in zip(expected, decisive) if d]
    texts = model.generate(batch, num_beams=3, max_new_tokens=5)
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)


def test_a_few_steps_learn(data, procs):
    root, paths = data
    vp, tp = procs
    torch.manual_seed(0)
    model = registry.get_model_class("gpt_dialogue").from_pretrained("tiny")
    ds = DialogueDataset(vp, tp, os.path.join(root, "features"), [paths["train"]])
    batch = ds.collater([ds[i] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0] and min(losses[:3]) > max(losses[-3:])


def test_builder_writes_synthetic_data_once_and_builds_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(tmp_path))  # relative storage lives here
    builder_cls = registry.get_builder_class("avsd_dialogue")
    assert builder_cls.default_config_path().startswith(os.path.join(PROJECT, "avsd_plugin"))
    cfg = builder_cls.default_config()
    cfg.build_info.synthetic = OmegaConf.merge(cfg.build_info.synthetic, {"n_train": 5, "n_val": 3, "n_test": 2})
    sets = builder_cls(cfg).build_datasets()
    assert isinstance(sets["train"], DialogueDataset) and type(sets["val"]) is DialogueEvalDataset
    assert (len(sets["val"]), len(sets["test"])) == (3, 2) and len(sets["train"]) >= 10
    assert sets["train"].feature_root == str(tmp_path / "avsd_synthetic" / "features")
    assert sets["train"][0]["video_fts"].shape[1] == 24
    marker = tmp_path / "avsd_synthetic" / "synthetic.json"
    stamp = marker.stat().st_mtime_ns
    builder_cls(cfg).build_datasets()  # same settings: reused, not rewritten
    assert marker.stat().st_mtime_ns == stamp
    cfg.build_info.synthetic.n_val = 4  # other settings: rewritten
    assert len(builder_cls(cfg).build_datasets()["val"]) == 4
    del cfg.build_info["synthetic"]
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="train.json"):
        builder_cls(cfg).build_datasets()


def test_dialogue_task_scores_generated_answers(model, data, procs, tmp_path, monkeypatch):
    root, paths = data
    vp, tp = procs
    monkeypatch.setitem(registry.paths, "result_dir", str(tmp_path))  # what the runner registers
    task = registry.get_task_class("dialogue").setup_task(
        OmegaConf.create({"num_beams": 2, "max_len": 8, "progress_bar": False}))
    assert task.generate_kwargs["num_beams"] == 2 and task.generate_kwargs["max_new_tokens"] == 8
    ds = DialogueEvalDataset(vp, tp, os.path.join(root, "features"), [paths["val"]])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collater)
    records = task.evaluation(model, loader)
    assert [r["instance_id"] for r in records] == [a["instance_id"] for a in ds.annotation]
    model.eval()
    with torch.no_grad():  # per-record losses add up to the batch loss
        out = model(ds.collater([ds[i] for i in range(4)]))
    assert sum(r["n_tokens"] for r in records[:4]) == out["n_tokens"]
    assert sum(r["loss_sum"] for r in records[:4]) / out["n_tokens"] == pytest.approx(float(out["lm_loss"]), rel=1e-5)
    metrics = task.after_evaluation(records + records[:2], "val", 0)  # repeats (distributed padding) dropped
    assert {"loss", "Bleu_1", "Bleu_4", "CIDEr", "agg_metrics"} <= set(metrics)
    assert metrics["agg_metrics"] == metrics["CIDEr"]
    assert metrics["n_tokens"] == sum(r["n_tokens"] for r in records)
    assert json.load(open(tmp_path / "val_answers.json"))[0]["gt_answer"] == ds.annotation[0]["answer"]
    perfect = [dict(r, answer=r["gt_answer"]) for r in records]
    assert task.score(perfect)["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    loss_only = registry.get_task_class("dialogue").setup_task(OmegaConf.create({"generate": False}))
    metrics = loss_only.after_evaluation(loss_only.evaluation(model, loader), "val", 1)
    assert metrics["agg_metrics"] == -metrics["loss"] and "CIDEr" not in metrics


def _run(script, args, tmp_path):
    env = {**os.environ, "LAVIS_LITE_CACHE_ROOT": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _log(path):
    """The runner's one-line JSON records ({"split": ..., "epoch": ..., metrics}) in log.txt."""
    records = []
    with open(path) as f:
        for line in f:
            if line.startswith('{"split"'):
                records.append(json.loads(line))
    return records


SMALL_DATA = ["datasets.avsd_dialogue.build_info.synthetic.n_train=12",
              "datasets.avsd_dialogue.build_info.synthetic.n_val=4",
              "datasets.avsd_dialogue.build_info.synthetic.n_test=4"]


@pytest.mark.slow
def test_train_py_then_evaluate_py_with_import_flag(tmp_path):
    """train.py on the shipped YAML (plugin from `imports:`): loss falls, BLEU/CIDEr reported;
    evaluate.py with the plugin from `--import` reproduces the test metrics of the best checkpoint."""
    _run("train.py", ["--cfg-path", os.path.join(PROJECT, "train_tiny.yaml"), "--job-id", "t",
                      "--options", f"run.output_dir={tmp_path / 'train'}", "run.max_epoch=3",
                      "run.progress_bar=False", "run.num_beams=2", *SMALL_DATA], tmp_path)
    job = tmp_path / "train" / "t"
    log = _log(job / "log.txt")
    train = [r["loss"] for r in log if r["split"] == "train"]
    val = [r for r in log if r["split"] == "val"]
    assert len(train) == 3 and train[2] < train[1] < train[0] and train[2] < 0.7 * train[0]
    assert val[-1]["loss"] < val[0]["loss"]
    test = [r for r in log if r["split"] == "test"][-1]
    assert {"Bleu_1", "Bleu_4", "CIDEr"} <= set(test) and test["agg_metrics"] == test["CIDEr"]
    assert (job / "checkpoint_best" / "model.safetensors").is_file()
    assert (job / "result" / "test_answers.json").is_file()

    eval_yaml = tmp_path / "eval.yaml"
    with open(os.path.join(PROJECT, "eval_tiny.yaml")) as f:
        cfg = OmegaConf.load(f)
    del cfg["imports"]  # the plugin comes from --import instead
    OmegaConf.save(cfg, eval_yaml)
    proc = _run("evaluate.py", ["--cfg-path", str(eval_yaml), "--import", os.path.join(PROJECT, "avsd_plugin"),
                                "--job-id", "e", "--options", f"run.output_dir={tmp_path / 'eval'}",
                                f"model.checkpoint={job / 'checkpoint_best'}", "run.num_beams=2", *SMALL_DATA],
                tmp_path)
    evaluated = [r for r in _log(tmp_path / "eval" / "e" / "log.txt") if r["split"] == "test"][-1]
    assert evaluated["loss"] == pytest.approx(test["loss"], rel=1e-5)
    assert evaluated["CIDEr"] == pytest.approx(test["CIDEr"], rel=1e-5)
    assert '"CIDEr"' in proc.stdout
