"""Tasks: train_step contract, loss-based evaluation metrics, save_result merging over 2 ranks."""
import json
import os

import pytest
import torch

import lavis_lite  # noqa: F401  (registers the tasks)
from lavis_lite.common.registry import registry
from lavis_lite.tasks.base_task import BaseTask, batch_size, move_to_device


class _Model(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, samples):
        return self.out


def test_task_names_registered():
    for name in ("image_text_pretrain", "deepspeed_image_text_pretrain", "instruction_tuning"):
        assert issubclass(registry.get_task_class(name), BaseTask)


def test_train_step_accepts_a_lavis_model_with_only_loss_and_rejects_one_without_loss():
    out = BaseTask().train_step(_Model({"loss": torch.tensor(1.0)}), {})
    assert float(out["loss"]) == 1.0
    with pytest.raises(TypeError, match="'loss'"):
        BaseTask().train_step(_Model({"logits": torch.zeros(2)}), {})


def test_micro_batch_weight_rule_labels_then_n_tokens_then_equal():
    from lavis_lite.tasks.step_output import BATCHES, TOKENS, micro_batch_weight, split_train_output
    labels = torch.tensor([[-100, 3, 4], [5, -100, -100]])
    # labels win over the model's n_tokens (known before the forward, the same on every runner)
    weight, kind = micro_batch_weight({"labels": labels}, {"n_tokens": 9})
    assert int(weight) == 3 and kind == TOKENS
    assert micro_batch_weight({"x": 1}, {"n_tokens": 9}) == (9, TOKENS)
    assert micro_batch_weight({"x": 1}, {"loss": 1.0}) == (1, BATCHES)
    # what LAVIS tasks' train_step returns
    loss = torch.tensor(2.0)
    assert split_train_output(loss) == (loss, {})
    assert split_train_output((loss, {"loss_itc": 1.0}))[1] == {"loss_itc": 1.0}
    with pytest.raises(TypeError, match="train_step"):
        split_train_output("nope")


def test_loss_based_evaluation_without_n_tokens_averages_batches():
    task = BaseTask()
    outs = iter([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(4.0)}])

    class M(torch.nn.Module):
        def forward(self, samples):
            return next(outs)

    metrics = task.after_evaluation(task.evaluation(M(), [{"x": torch.zeros(1)}] * 2), "val", 0)
    assert metrics["loss"] == pytest.approx(2.5) and metrics["n_batches"] == 2
    assert "token_acc" not in metrics and metrics["agg_metrics"] == pytest.approx(-2.5)


def test_stepper_rejects_a_window_mixing_token_and_equal_weights():
    from lavis_lite.runners.stepper import BATCHES, TOKENS, Stepper
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)

    class Sched:
        def step(self, **kw):
            pass
    st = Stepper(lin, opt, Sched(), accum_grad_iters=2)
    st.begin_window([None, None], 0, 0)
    st.backward(lin(torch.ones(2)).sum(), 3, TOKENS)
    with pytest.raises(ValueError, match="mixes"):
        st.backward(lin(torch.ones(2)).sum(), 1, BATCHES)


def test_loss_based_evaluation_is_token_weighted():
    task = BaseTask()
    outs = iter([{"loss": torch.tensor(1.0), "n_tokens": 1, "n_correct": 1},
                 {"loss": torch.tensor(4.0), "n_tokens": 3, "n_correct": 0}])

    class M(torch.nn.Module):
        def forward(self, samples):
            return next(outs)

    result = task.evaluation(M(), [{"x": torch.zeros(1)}, {"x": torch.zeros(1)}])
    metrics = task.after_evaluation(result, "val", 0)
    assert metrics["loss"] == pytest.approx((1.0 + 12.0) / 4)
    assert metrics["token_acc"] == pytest.approx(0.25)
    assert metrics["agg_metrics"] == pytest.approx(0.25)


def test_instruction_tuning_requires_token_accuracy():
    task = registry.get_task_class("instruction_tuning")()
    with pytest.raises(KeyError, match="n_correct"):
        task.valid_step(_Model({"loss": torch.tensor(1.0), "n_tokens": 2}), {})


def test_batch_size_and_move_to_device():
    assert batch_size({"n_images": [1, 0, 2], "image": torch.zeros(3, 3, 4, 4)}) == 3
    assert batch_size({"image": torch.zeros(5, 3, 4, 4)}) == 5
    moved = move_to_device({"a": [torch.zeros(1)], "b": ["x"]}, "cpu")
    assert moved["b"] == ["x"] and isinstance(moved["a"][0], torch.Tensor)


def test_save_result_merges_two_ranks(tmp_path, monkeypatch):
    """Rank 1 then rank 0 write their parts (barriers are no-ops here); rank 0 merges and deduplicates."""
    from lavis_lite.common import dist_utils
    monkeypatch.setattr(dist_utils, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist_utils, "barrier", lambda: None)
    result_dir = str(tmp_path / "result")
    for rank in (1, 0):
        monkeypatch.setattr(dist_utils, "get_rank", lambda rank=rank: rank)
        records = [{"instance_id": i, "rank": rank} for i in (rank, 2)]  # id 2 appears on both ranks
        path = BaseTask.save_result(records, result_dir, "val_epoch0", remove_duplicate="instance_id")
        assert os.path.exists(path) == (rank == 0)  # only rank 0 merges
    merged = json.load(open(path))
    assert sorted(r["instance_id"] for r in merged) == [0, 1, 2]
    assert sorted(os.listdir(result_dir)) == ["val_epoch0.json", "val_epoch0_rank0.json", "val_epoch0_rank1.json"]


def test_save_result_single_process_without_dedup(tmp_path):
    path = BaseTask.save_result([{"a": 1}, {"a": 1}], str(tmp_path), "r")
    assert json.load(open(path)) == [{"a": 1}, {"a": 1}]
    with pytest.raises(KeyError, match="instance_id"):
        BaseTask.save_result([{"a": 1}], str(tmp_path), "r2", remove_duplicate="instance_id")
