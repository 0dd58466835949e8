"""Each benchmark script runs for a moment at tiny size and prints one JSON line with its keys."""
import importlib.util
import json
import os

import pytest
import torch

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
ENV_KEYS = {"python", "torch", "transformers", "cpu_count", "torch_threads", "cuda", "git_commit"}


def run_bench(name, argv, capsys):
    """Import benchmarks/<name>.py and run its main(argv) in this process; return the parsed JSON line."""
    import sys
    sys.path.insert(0, BENCH_DIR)
    threads = torch.get_num_threads()
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH_DIR, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        capsys.readouterr()
        module.main(argv)
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(BENCH_DIR)
    assert len(lines) == 1, lines  # exactly one line of output
    record = json.loads(lines[0])
    assert record["bench"] == name
    assert {"config", "figures", "env"} <= set(record)
    assert ENV_KEYS <= set(record["env"])
    return record


def test_bench_preprocess(capsys):
    r = run_bench("bench_preprocess", ["--n", "64", "--seconds", "0.2", "--repeats", "1", "--all-cores"], capsys)
    f = r["figures"]
    assert f["conversations_per_s_epoch1"] > 0 and f["conversations_per_s_epoch2plus"] > 0
    assert f["text_cache"] is True and f["mean_tokens_per_conversation"] > 8


def test_bench_data(capsys):
    r = run_bench("bench_data", ["--n", "24", "--source-size", "64x48", "--image-size", "32", "--batch-size", "4",
                                 "--workers", "0", "--seconds", "0.3", "--feature-shape", "8,64",
                                 "--decodes", "full,draft"], capsys)
    f = r["figures"]
    assert f["images_per_s_workers_0"] > 0 and f["cached_features_per_s_workers_0"] > 0
    assert f["tensor_resize_images_per_s_workers_0"] > 0 and f["tensor_resize_images_per_cpu_s"] > 0
    assert f["draft_images_per_cpu_s"] > 0 and f["tensor_resize_draft_images_per_cpu_s"] > 0
    assert r["config"]["n_records"] > 0


@pytest.mark.slow
def test_bench_train(capsys):
    r = run_bench("bench_train", ["--size", "tiny", "--modes", "published,naive,fast_group_tresize,fast_group_cache", "--n-records", "16",
                                  "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "1",
                                  "--source-size", "64x48"], capsys)
    f = r["figures"]
    for mode in ("naive", "fast_group_tresize", "fast_group_cache"):
        assert {"samples_per_s", "samples_per_cpu_s", "supervised_tokens_per_s", "peak_mem_mb",
                "speedup_vs_naive"} <= set(f[mode])
        assert f[mode]["samples_per_s"] > 0 and f[mode]["peak_mem_mb"] > 0
    assert f["naive"]["speedup_vs_naive"] == 1.0
    assert r["config"]["modes"]["naive"] == {"pad": "max", "ckpt": 1, "pack": 0, "cache": 0, "group": 0,
                                             "prefix": 0, "resize": "pil", "decode": "full", "attn": "sdpa", "opt": "auto",
                                             "frozen": 0, "trim": 1, "lastsup": 1, "constqkv": 1, "imgattn": 1, "fattn": "sdpa",
                                             "chunk": 32, "dnn": 0}
    assert r["config"]["modes"]["fast_group_tresize"]["resize"] == "tensor"
    t = f["llm_tokens"]
    assert t["packed"] <= t["pad_to_longest"] <= t["pad_to_max"] and t["real_tokens"] <= t["packed"]


@pytest.mark.slow
def test_bench_train_published_mix_best_modes_bf16(capsys):
    """The issue-22 table's modes on the published data mix, CPU bf16 autocast (fp32 weights)."""
    r = run_bench("bench_train", ["--size", "tiny", "--data-mix", "published", "--dtype", "bf16",
                                  "--modes", "published,best_uncached,best_cached", "--n-records", "16",
                                  "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "1",
                                  "--source-size", "64x48", "--breakdown"], capsys)
    f = r["figures"]
    for mode in ("published", "best_uncached", "best_cached"):
        assert f[mode]["samples_per_cpu_s"] > 0 and f[mode]["supervised_tokens_per_s"] > 0
        ms = f[mode]["cpu_ms_per_step"]  # --breakdown: the parts add up to the step
        assert min(ms["data"], ms["image_encoder"], ms["rest"]) >= 0 and ms["total"] > 0
        assert abs(ms["data"] + ms["image_encoder"] + ms["rest"] - ms["total"]) < 0.05
    assert r["config"]["data_mix"] == "published" and r["config"]["dtype"] == "bf16"
    assert f["llm_tokens"]["mean_seq_len"] > 0


def test_published_conversations_shape():
    import sys
    sys.path.insert(0, BENCH_DIR)
    try:
        from _common import published_conversations
    finally:
        sys.path.remove(BENCH_DIR)
    convs = published_conversations(200, seed=3)
    assert convs == published_conversations(200, seed=3)  # seeded
    rounds = [len(c) // 2 for c in convs]
    assert set(rounds) == {1, 2, 3}
    for conv in convs:
        assert conv[0]["value"].startswith("<ImageHere> ")
        assert sum(t["value"].count("<ImageHere>") for t in conv) == 1
        assert all(4 <= len(t["value"].split()) <= 40 for t in conv[1::2])
    longer = published_conversations(50, seed=3, rounds_scale=4.0)
    assert min(len(c) for c in longer) >= 8


def test_compare_loss_curves():
    import sys
    sys.path.insert(0, BENCH_DIR)
    try:
        import compare_loss_curves as clc
    finally:
        sys.path.remove(BENCH_DIR)
    a = [{"kind": "train", "step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 11)]
    b = [{"kind": "train", "step": s, "loss": 2.0 - 0.1 * s + (0.05 if s == 4 else 0.0)} for s in range(1, 12)]
    b.append({"kind": "eval", "split": "val", "step": 10, "loss": 1.5, "token_acc": 0.5})
    r = clc.compare(a, b, smooth=2)
    assert r["steps"] == 10 and r["last_step"] == 10
    assert abs(r["max_abs_diff"] - 0.05) < 1e-9 and abs(r["mean_abs_diff"] - 0.005) < 1e-9
    assert abs(r["max_abs_diff_ma2"] - 0.025) < 1e-9
    assert r["final_loss"] == [1.0, 1.0] and r["val"][1] == [{"step": 10, "loss": 1.5, "token_acc": 0.5}]
    with pytest.raises(ValueError, match="no training step"):
        clc.compare(a, [{"kind": "eval", "step": 1}])


@pytest.mark.slow
def test_bench_generate(capsys):
    r = run_bench("bench_generate", ["--size", "tiny", "--batch-size", "2", "--max-new-tokens", "3",
                                     "--repeats", "1"], capsys)
    f = r["figures"]
    assert f["batched_tokens_per_s"] > 0 and f["one_by_one_tokens_per_s"] > 0
    assert f["batched_equals_one_by_one"] is True


def test_bench_train_rejects_unknown_mode_key():
    import sys
    sys.path.insert(0, BENCH_DIR)
    try:
        spec = importlib.util.spec_from_file_location("bench_train", os.path.join(BENCH_DIR, "bench_train.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCH_DIR)
    assert module.parse_modes("naive,mine:pad=max+pack=0+resize=tensor")["mine"] == {
        "pad": "max", "ckpt": 0, "pack": 0, "cache": 0, "group": 0, "prefix": 1, "resize": "tensor",
        "decode": "full", "attn": "sdpa", "opt": "auto", "frozen": 0, "trim": 1, "lastsup": 1, "constqkv": 1, "imgattn": 1, "fattn": "sdpa",
        "chunk": 32, "dnn": 0}
    assert module.parse_modes("published")["published"]["attn"] == "eager"
    assert module.parse_modes("published")["published"]["frozen"] == 0  # the original recipe's forward
    assert module.parse_modes("best_cached")["best_cached"]["frozen"] == 1
    # the published recipe and the exact preset decode every JPEG pixel; best_uncached opts into draft decoding
    assert module.parse_modes("published")["published"]["decode"] == "full"
    assert module.parse_modes("best_uncached_exact")["best_uncached_exact"]["decode"] == "full"
    assert module.parse_modes("best_uncached_exact")["best_uncached_exact"]["resize"] == "pil"
    assert module.parse_modes("best_uncached")["best_uncached"]["decode"] == "draft"
    assert module.parse_modes("best_cached")["best_cached"]["dnn"] == 1 and module.parse_modes("published")["published"]["dnn"] == 0
    assert module.parse_modes("x:decode=draft")["x"]["decode"] == "draft"
    assert module.parse_modes("x:frozen=1+lastsup=0")["x"]["lastsup"] == 0
    with pytest.raises(ValueError, match="unknown key"):
        module.parse_modes("x:flash=1")
    with pytest.raises(ValueError, match="unknown mode"):
        module.parse_modes("fastest")
