"""lavis_lite as an lmms-eval model: the adapter's answers and log-likelihoods equal the model's own
(generate / forward) on the same images, and the real lmms-eval CLI resolves ``--model lavis_lite``
through our entry point and scores a local task built here (no network)."""
import glob
import json
import os
import subprocess
import sys
import tomllib

import pytest
import torch
from PIL import Image

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance  # noqa: E402

from lavis_lite.inference_utils import load_model_from_cfg  # noqa: E402
from lavis_lite.integrations.lmms_eval_model import LavisLite  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "models", "minigpt4qwen", "minigpt4qwen_tiny.yaml")
COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}
QUESTION = "What colour is the square?\nAnswer with one word."
GEN = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Images, and weights for the tiny model that make its answers depend on the image (a random-init
    tiny model only writes newlines): every matrix redrawn, saved as a full safetensors checkpoint."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("lmms")
    docs = []
    for i, colour in enumerate(["red", "blue", "green", "red"]):
        path = root / f"{i}.png"
        Image.new("RGB", (40, 40), COLOURS[colour]).save(path)
        docs.append({"id": i, "image": str(path), "question": QUESTION, "colour": colour,
                     "choices": list(COLOURS), "label": list(COLOURS).index(colour)})
    model, processor, _ = load_model_from_cfg(TINY)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    weights = root / "weights.safetensors"
    tied = {"llm_model.lm_head.weight"}  # tied to the input embeddings; safetensors stores it once
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}, str(weights))
    images = torch.stack([processor(Image.open(d["image"]).convert("RGB")) for d in docs])
    direct = model.generate({"image": images, "n_images": [1] * len(docs), "prompt": [QUESTION] * len(docs)}, **GEN)
    assert len(set(direct)) > 1 and all(direct), direct  # image-dependent, non-empty answers
    return {"root": root, "docs": docs, "weights": str(weights), "model": model, "images": images, "direct": direct}


@pytest.fixture(scope="module")
def adapter(setup):
    lm = LavisLite(cfg_path=TINY, checkpoint=setup["weights"], device="cpu", batch_size=3)
    lm.task_dict = {"local": {"test": setup["docs"]}}
    return lm


def _visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def _request(kind, args, doc_id):
    return Instance(request_type=kind, arguments=args, idx=0,
                    metadata={"task": "local", "doc_id": doc_id, "repeats": 1})


def _reply_logprob(model, image, question, reply):
    """log p(reply tokens + <|im_end|>) from the model's own training forward (mean loss x tokens)."""
    out = model({"image": image[None], "n_images": [1],
                 "conversations": [[{"from": "human", "value": "<ImageHere>\n" + question},
                                    {"from": "gpt", "value": reply}]]})
    return -float(out["loss"]) * out["n_tokens"]


def test_generate_until_equals_the_models_own_answers_in_order_and_batches(setup, adapter):
    docs, direct = setup["docs"], setup["direct"]
    # two generation-settings groups interleaved, batch size 3: answers come back in request order
    other = dict(GEN, max_new_tokens=2)
    requests = [_request("generate_until", (QUESTION, dict(GEN if i % 2 == 0 else other), _visual, i, "local", "test"), i)
                for i in range(len(docs))]
    got = adapter.generate_until(requests)
    short = setup["model"].generate({"image": setup["images"], "n_images": [1] * 4, "prompt": [QUESTION] * 4},
                                    **dict(GEN, max_new_tokens=2))
    assert got == [direct[i] if i % 2 == 0 else short[i] for i in range(4)]
    # `until` cuts at the first stop string
    stop = direct[1].split()[-1]
    cut = adapter.generate_until([_request("generate_until", (QUESTION, dict(GEN, until=[stop]), _visual, 1, "local", "test"), 1)])
    assert cut == [direct[1].split(stop, 1)[0].strip()]
    # lmms-eval's <image> placeholder is our image mark
    marked = adapter.generate_until([_request("generate_until", ("<image>\n" + QUESTION, dict(GEN), _visual, 2, "local", "test"), 2)])
    assert marked == [direct[2]]


def test_loglikelihood_equals_the_training_forwards_log_probability(setup, adapter):
    model, images = setup["model"], setup["images"]
    for doc_id in (0, 1):
        for choice in ("red", "blue"):
            image = images[doc_id]
            logprobs, greedy = adapter.continuation_logprobs(QUESTION, f" {choice}<|im_end|>", [image])
            with torch.no_grad():
                want = _reply_logprob(model, image, QUESTION, f" {choice}")
            assert float(logprobs.sum()) == pytest.approx(want, abs=1e-4)
            assert greedy is False
            # loglikelihood requests get lmms-eval's convention: the mean token loss
            request = _request("loglikelihood", (QUESTION, f" {choice}<|im_end|>", _visual, doc_id, "local", "test"), doc_id)
            (loss, _), = adapter.loglikelihood([request])
            assert loss == pytest.approx(-want / len(logprobs), abs=1e-5)
    # output_type loglikelihood passes doc_to_target (a callable) as the continuation
    by_target = adapter.loglikelihood([_request("loglikelihood", (QUESTION, lambda d: " " + d["colour"], _visual, 1,
                                                                  "local", "test"), 1)])
    logprobs, _ = adapter.continuation_logprobs(QUESTION, " blue", [images[1]])
    assert by_target[0][0] == pytest.approx(float(-logprobs.mean()))


def test_multi_round_reprompts_until_the_task_says_stop(setup, adapter):
    follow_up = "And the background?"
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((list(previous_output), round_idx, previous_round_info))
        return _visual(doc), follow_up, round_idx >= 2, previous_output, {"round": round_idx}

    request = _request("generate_until_multi_round", (QUESTION, dict(GEN), _visual, doc_to_text, 0, "local", "test"), 0)
    (rounds,) = adapter.generate_until_multi_round([request])
    second = setup["model"].generate({"image": setup["images"][:1], "n_images": [1], "prompt": [follow_up]}, **GEN)
    assert rounds == [setup["direct"][0], second[0]]
    assert seen == [([setup["direct"][0]], 1, None), ([setup["direct"][0], second[0]], 2, {"round": 1})]


def test_bad_arguments_and_inputs_are_clear_errors(setup, adapter, tmp_path):
    with pytest.raises(TypeError, match="unknown lavis_lite model_args.*pretrained"):
        LavisLite(cfg_path=TINY, pretrained="x")
    with pytest.raises(ValueError, match="exactly one of cfg_path"):
        LavisLite()
    with pytest.raises(ValueError, match="options=... applies to cfg_path"):
        LavisLite(name="minigpt4qwen", model_type="tiny", options="max_txt_len=64")
    by_name = LavisLite(name="minigpt4qwen", model_type="tiny", checkpoint=setup["weights"], device="cpu")
    by_name.task_dict = adapter.task_dict
    request = _request("generate_until", (QUESTION, dict(GEN), _visual, 1, "local", "test"), 1)
    assert by_name.generate_until([request]) == [setup["direct"][1]]
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ValueError, match="images only"):
        adapter._process_visuals([str(video)], "local/test/0")
    with pytest.raises(TypeError, match="PIL images or image paths"):
        adapter._process_visuals([{"array": [0.1]}], "local/test/0")
    with pytest.raises(ValueError, match="2 <ImageHere> marks for 1 image"):
        adapter._prompt("<ImageHere><ImageHere> hi", 1)


def _entry_point_dir(tmp_path) -> list[str]:
    """lmms-eval finds models through the ``lmms_eval.models`` entry points of installed packages. When
    lavis_lite is installed from this checkout its metadata already holds ours; otherwise (a checkout
    on PYTHONPATH) a dist-info made from pyproject.toml's declaration stands in for the install."""
    from importlib.metadata import entry_points

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["entry-points"]["lmms_eval.models"]
    assert declared == {"lavis_lite": "lavis_lite.integrations.lmms_eval_model:manifest"}
    installed = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    if installed.get("lavis_lite") == declared["lavis_lite"]:
        return []
    info = tmp_path / "ep" / "lavis_lite_entry_points-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lavis-lite-entry-points\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    return [str(tmp_path / "ep")]


TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
metadata:
  version: 0.0
"""


@pytest.mark.slow
def test_lmms_eval_cli_scores_a_local_task_with_lavis_lite(setup, adapter, tmp_path):
    docs = [dict(d, answer=a) for d, a in zip(setup["docs"], setup["direct"])]  # the model's own answers
    data = tmp_path / "data.json"
    data.write_text(json.dumps(docs))
    tasks = tmp_path / "tasks" / "lavis_lite_local"
    tasks.mkdir(parents=True)
    (tasks / "utils.py").write_text(
        "from PIL import Image\n\n"
        "def doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n\n"
        "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n    return doc['question']\n\n"
        "def doc_to_choice(doc):\n    return doc['choices']\n")
    (tasks / "local_gen.yaml").write_text(TASK_YAML.format(name="lavis_lite_local_gen", data=data) + (
        "output_type: generate_until\ndoc_to_target: answer\n"
        "generation_kwargs: {max_new_tokens: 6, temperature: 0, do_sample: false}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"))
    (tasks / "local_mc.yaml").write_text(TASK_YAML.format(name="lavis_lite_local_mc", data=data) + (
        "output_type: multiple_choice\ndoc_to_choice: !function utils.doc_to_choice\ndoc_to_target: label\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"))
    out = tmp_path / "out"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.pathsep.join(
                   [REPO] + _entry_point_dir(tmp_path) + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "lavis_lite",
           "--model_args", f"cfg_path={TINY},checkpoint={setup['weights']},device=cpu",
           "--tasks", "lavis_lite_local_gen,lavis_lite_local_mc", "--include_path", str(tmp_path / "tasks"),
           "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results_file,) = glob.glob(str(out / "*" / "*_results.json"))
    results = json.load(open(results_file))["results"]
    # every answer through lmms-eval is the model's own answer for that image
    assert results["lavis_lite_local_gen"]["exact_match,none"] == 1.0
    # each choice's log-likelihood is the adapter's for that document's image; acc follows from them
    (samples_file,) = glob.glob(str(out / "*" / "*_samples_lavis_lite_local_mc.jsonl"))
    samples = sorted((json.loads(line) for line in open(samples_file)), key=lambda s: s["doc_id"])
    correct = 0
    for sample in samples:
        doc = docs[sample["doc_id"]]
        image = [adapter._image_processor(_visual(doc)[0])]
        want = [float(-adapter.continuation_logprobs(QUESTION, f" {c}", image)[0].mean()) for c in doc["choices"]]
        got = [float(r[0][0]) for r in sample["resps"]]
        assert got == pytest.approx(want, abs=1e-4)
        correct += int(min(range(len(want)), key=want.__getitem__) == doc["label"])  # lowest loss wins
    assert results["lavis_lite_local_mc"]["acc,none"] == pytest.approx(correct / len(docs))
