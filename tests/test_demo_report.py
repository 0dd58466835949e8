"""The demo's held-out split, its pass/fail rule and its report picture (run_scripts/demo_report.py,
lavis_lite/tools/demo_figure.py) on small files written here: no training."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "run_scripts"))
import demo_report  # noqa: E402

from lavis_lite.datasets import demo as demo_data  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo_data.main(["--out", str(out), "--n", "60", "--val-per-type", "2", "--test-per-type", "5", "--shards", "1"])
    return str(out)


def test_held_out_splits_are_stratified_by_question_type(data):
    for split, k in (("val", 2), ("test", 5)):
        with open(os.path.join(data, "instruction", f"{split}.json")) as f:
            records = json.load(f)
        counts = {}
        for r in records:
            counts[r["question_type"]] = counts.get(r["question_type"], 0) + 1
        assert counts == {qt: k for qt in demo_report.QUESTION_TYPES}
        # the answers are still the drawn ones
        for r in records:
            out = r["output"] if isinstance(r["output"], str) else r["output"][-1]
            assert out == demo_data.answer_of(r["turn_types"][-1], r["params"], 32)
    with open(os.path.join(data, "meta.json")) as f:
        assert json.load(f)["test_per_type"] == 5


def test_reuse_only_when_arguments_match(data, capsys):
    demo_data.main(["--out", data, "--n", "60", "--val-per-type", "2", "--test-per-type", "5", "--shards", "1",
                    "--reuse"])
    assert "reused" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown question kinds"):
        demo_data.generate(data + "_x", n=60, mix={"colour": 1.0, "colours": 1.0})


def _results(tmp_path, data, acc: dict):
    """Fake evaluation output: per type, ``acc[type]`` percent of the test answers right."""
    with open(os.path.join(data, "instruction", "test.json")) as f:
        records = json.load(f)
    results, per_type = [], {}
    for qt in demo_report.QUESTION_TYPES:
        rows = [r for r in records if r["question_type"] == qt]
        n_right = round(acc[qt] / 100 * len(rows))
        for i, r in enumerate(rows):
            ref = r["output"] if isinstance(r["output"], str) else r["output"][-1]
            pred = ref if i < n_right else "wrong"
            results.append({"instance_id": r["id"], "question_type": qt, "prediction": pred, "reference": ref,
                            "exact": pred == ref})
        per_type[qt] = {"n": len(rows), "exact_acc": 100.0 * n_right / len(rows), "contains_acc": 0.0}
    res_dir = tmp_path / "result"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "test_instruction_result.json").write_text(json.dumps(results))
    (res_dir / "test_metrics.json").write_text(json.dumps(
        {"n": len(results), "exact_acc": 0.0, "contains_acc": 0.0, "per_question_type": per_type}))
    return str(res_dir)


def _job(tmp_path, name, metric):
    job = tmp_path / name
    job.mkdir()
    lines = [{"kind": "train", "step": s, "epoch": s // 10, "loss": 3.0 / (1 + s), "lr": 1e-3} for s in (5, 10, 15, 20)]
    lines += [{"kind": "eval", "split": "val", "step": s, "epoch": s // 10, metric: 50.0 + s} for s in (10, 20)]
    (job / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(job)


def test_exit_status_needs_every_type_and_enough_questions(tmp_path, data):
    good = {qt: 100.0 for qt in demo_report.QUESTION_TYPES}
    res = _results(tmp_path, data, good)
    assert demo_report.main(["--result-dir", res, "--data", data, "--min-per-type", "5"]) == 0
    # only 5 questions per type here: below the default minimum of 100 -> fails
    assert demo_report.main(["--result-dir", res, "--data", data]) == 1
    res = _results(tmp_path, data, dict(good, position=80.0))  # 4 of 5
    assert demo_report.main(["--result-dir", res, "--data", data, "--min-per-type", "5"]) == 1


def test_report_picture_from_metrics_jsonl(tmp_path, data):
    pytest.importorskip("matplotlib")
    res = _results(tmp_path, data, {qt: 60.0 for qt in demo_report.QUESTION_TYPES})
    jobs = [f"stage1={_job(tmp_path, 's1', 'agg_metrics')}", f"stage2={_job(tmp_path, 's2', 'token_acc')}"]
    png = tmp_path / "report.png"
    rc = demo_report.main(["--result-dir", res, "--data", data, "--min-per-type", "5", "--jobs", *jobs,
                           "--picture", str(png)])
    assert rc == 1  # 60% everywhere
    from PIL import Image
    with Image.open(png) as im:
        assert im.width > 600 and im.height > 400
        # the answer grid has green (right) and red (wrong) frames
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert any(g > 100 and r < 60 and b < 60 for r, g, b in colours)
    assert any(r > 200 and g < 40 and b < 40 for r, g, b in colours)
    from lavis_lite.tools.demo_figure import curves
    c = curves(os.path.join(tmp_path, "s2"))
    assert c["train"][0] == (5, 0.5) and c["eval"]["val token_acc"] == [(10, 60.0), (20, 70.0)]


def test_curves_need_training_records(tmp_path):
    from lavis_lite.tools.demo_figure import curves
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "split": "val", "step": 1, "x": 1}) + "\n")
    with pytest.raises(ValueError, match="no training records"):
        curves(str(tmp_path))


def test_compare_breakdown_by_question_and_verdict():
    records = {"a": {"question_type": "compare", "turn_types": ["compare_colour"]},
               "b": {"question_type": "compare", "turn_types": ["compare_shape"]},
               "c": {"question_type": "compare", "turn_types": ["compare_shape"]},
               "d": {"question_type": "colour", "turn_types": ["colour"]}}
    results = [  # a: right; b: wrong values, right verdict; c: wrong verdict; d: not a compare question
        {"instance_id": "a", "prediction": "red and blue, so no.", "reference": "red and blue, so no.", "exact": True},
        {"instance_id": "b", "prediction": "a circle and a square, so no.",
         "reference": "a circle and a triangle, so no.", "exact": False},
        {"instance_id": "c", "prediction": "yes", "reference": "no", "exact": False},
        {"instance_id": "d", "prediction": "red", "reference": "blue", "exact": False}]
    got = demo_report.compare_breakdown(results, records)
    assert got == {"colour": 100.0, "shape": 0.0, "verdict": pytest.approx(200 / 3)}
    assert demo_report.compare_breakdown(results[3:], records) == {}
