"""deepspeed_runner: RunnerBase with a DeepSpeed engine (ZeRO 0-3, bf16/fp16, CPU offload).

The DeepSpeed config comes from ``run.deepspeed_config`` (a mapping or a JSON path). Batch sizes,
gradient accumulation and clipping are derived from the run config (``batch_size_train``,
``accum_grad_iters``, ``max_grad_norm``); a DeepSpeed config that says otherwise is an error.
The optimizer is torch AdamW over our parameter groups unless the DeepSpeed config has an
``optimizer`` section (FusedAdam / DeepSpeedCPUAdam, by choice); our lr scheduler is stepped
once per optimizer step. Epoch- or iteration-based like RunnerBase (``run.iters``).
DeepSpeed is imported only when the engine is built.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings

import torch
import torch.distributed as dist

from lavis_lite.common import dist_utils
from lavis_lite.common.config import ConfigError
from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import DeepSpeedKeys
from lavis_lite.runners.runner_base import RunnerBase
from lavis_lite.runners.stepper import BATCHES, TOKENS, Stepper, window_totals

logger = logging.getLogger(__name__)

DS_TAG = "deepspeed"  # sub-directory of a checkpoint directory that DeepSpeed writes


def load_deepspeed_config(raw, cfg_path: str = "the run config") -> dict:
    if raw is None:
        return {}
    if isinstance(raw, str):
        path = os.path.expanduser(raw)
        if not os.path.isfile(path):
            raise ConfigError(f"run.deepspeed_config {raw!r} in {cfg_path} is neither a mapping nor an existing JSON file")
        with open(path) as f:
            return json.load(f)
    from omegaconf import OmegaConf
    return OmegaConf.to_container(raw, resolve=True) if not isinstance(raw, dict) else dict(raw)


def derive_deepspeed_config(run_cfg, world_size: int, cfg_path: str = "the run config") -> dict:
    """The DeepSpeed config with every value that the run config also determines filled in from it."""
    ds = load_deepspeed_config(run_cfg.get("deepspeed_config", None), cfg_path)
    micro, accum = int(run_cfg.batch_size_train), int(run_cfg.get("accum_grad_iters", 1))
    derived = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
               "train_batch_size": micro * accum * world_size}
    if run_cfg.get("max_grad_norm", None):
        derived["gradient_clipping"] = float(run_cfg.max_grad_norm)
    for key, value in derived.items():
        if key in ds and ds[key] not in ("auto", value):
            raise ConfigError(f"deepspeed_config[{key!r}]={ds[key]!r} disagrees with the run config of {cfg_path} "
                              f"(which gives {value!r}: batch_size_train, accum_grad_iters, max_grad_norm and "
                              f"the world size decide it); remove it from the DeepSpeed config")
        ds[key] = value
    amp = run_cfg.get("amp", False)
    if amp in ("bf16", "fp16") and not ds.get(amp, {}).get("enabled", False):
        ds[amp] = {**ds.get(amp, {}), "enabled": True}
    if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"deepspeed_config enables both bf16 and fp16 ({cfg_path})")
    ds.setdefault("zero_allow_untested_optimizer", True)
    if ds.get("zero_optimization", {}).get("offload_optimizer") and "optimizer" not in ds:
        # CPU offload with our torch AdamW works (DeepSpeedCPUAdam is faster: add an "optimizer" section).
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds.setdefault("steps_per_print", 10 ** 9)  # our MetricLogger logs
    return ds


def _ensure_process_group() -> None:
    """DeepSpeed needs torch.distributed even for one process: a local gloo group of one."""
    # DeepSpeed reads LOCAL_RANK (also when a group exists already); RANK / WORLD_SIZE / MASTER_* are not
    # exported, so that child processes (a later torchrun or train.py) do not mistake themselves for members.
    os.environ.setdefault("LOCAL_RANK", "0")
    if dist_utils.is_dist_avail_and_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


class DeepSpeedStepper(Stepper):
    """Steps through the engine. The engine reduces and accumulates gradients itself, so a micro-batch's
    weight must be known before its backward: token weighting is exact when every micro-batch of the
    window has ``labels`` (their supervised tokens) or the model offers ``count_supervised_tokens(samples)``
    (a pre-forward count, for batches without labels, e.g. raw conversations): each backward is then
    ``l_i n_i W / N`` without DeepSpeed's 1/accum scaling. Otherwise micro-batches weigh equally
    (LAVIS's behaviour), with a warning when the model reports ``n_tokens`` that could not be used."""

    def __init__(self, engine, optimizer, scheduler, accum_grad_iters, amp_dtype, device):
        super().__init__(engine, optimizer, scheduler, accum_grad_iters, None, None, amp_dtype, device)
        self.engine = engine
        self.counter = getattr(engine.module, "count_supervised_tokens", None)
        self.window_tokens = None
        self.pre_counts = None
        self._warned = False

    @contextlib.contextmanager
    def micro_batch(self, last: bool):
        with self.autocast():  # the engine reduces gradients at its own accumulation boundary
            yield

    def _pre_count(self, samples):
        labels = samples.get("labels", None) if isinstance(samples, dict) else None
        if isinstance(labels, torch.Tensor):
            return int((labels != -100).sum())
        if self.counter is not None:
            return int(self.counter(samples))
        return None

    def begin_window(self, window, epoch, step):
        super().begin_window(window, epoch, step)
        counts = [self._pre_count(s) for s in window]
        # Every rank must take the same decision (the window total is all-reduced).
        known = all(c is not None for c in counts)
        if dist_utils.is_dist_avail_and_initialized():
            flag = torch.tensor([0.0 if known else 1.0])
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag)
            known = float(flag) == 0
        self.pre_counts = list(counts) if known else None
        self.window_tokens = None
        if known:
            _, self.window_tokens = window_totals(torch.zeros(()), torch.tensor(float(sum(counts))))

    def _backward(self, weighted_loss):
        raise AssertionError("DeepSpeedStepper.backward is used instead")

    def backward(self, loss, n_tokens, kind=None):
        if self.pre_counts is not None:  # exact token weighting with the counts known before the forward
            n, kind = float(self.pre_counts.pop(0)), TOKENS
        else:
            if kind == TOKENS and not self._warned and (self.accum_grad_iters > 1 or dist_utils.get_world_size() > 1):
                logger.warning("%s reports n_tokens only after its forward and its batches have no 'labels': "
                               "DeepSpeed micro-batches are weighted equally, not by supervised tokens (give the "
                               "batch 'labels' or the model count_supervised_tokens(samples))",
                               type(self.engine.module).__name__)
                self._warned = True
            n, kind = 1.0, BATCHES
        self._note_kind(kind)
        self.loss_sum += (torch.nan_to_num(loss.detach().double()) * n).cpu()
        self.n_tokens += n
        if self.window_tokens:
            scale = n * dist_utils.get_world_size() / self.window_tokens
            self.engine.backward(torch.nan_to_num(loss.float()) * scale, scale_wrt_gas=False)
        elif self.window_tokens is not None:  # a window without supervised tokens: keep the graph, no signal
            self.engine.backward(torch.nan_to_num(loss.float()) * 0.0)
        else:
            self.engine.backward(loss.float())
        self.engine.step()  # a no-op except at the accumulation boundary

    def step(self) -> dict:
        loss_sum, n_tokens = window_totals(self.loss_sum, self.n_tokens)
        stats = {"loss": loss_sum / n_tokens if n_tokens > 0 else 0.0, "lr": self.lr}
        if self.weight_kind != BATCHES:
            stats["n_tokens"] = n_tokens
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            stats["grad_norm"] = float(norm)
        return stats


@registry.register_runner("deepspeed_runner")
class DeepSpeedRunner(RunnerBase):
    run_schema = DeepSpeedKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        if not cfg.run_cfg.get("evaluate", False):
            derive_deepspeed_config(cfg.run_cfg, int(os.environ.get("WORLD_SIZE", 1)),
                                    getattr(cfg, "cfg_path", "the run config"))

    @property
    def ds_config(self) -> dict:
        return derive_deepspeed_config(self.run_cfg, dist_utils.get_world_size(),
                                       getattr(self.config, "cfg_path", "the run config"))

    @property
    def amp_dtype(self):
        ds = self.ds_config
        if ds.get("bf16", {}).get("enabled"):
            return torch.bfloat16
        if ds.get("fp16", {}).get("enabled"):
            return torch.float16
        return None

    @property
    def scaler(self):
        return None  # DeepSpeed scales fp16 losses itself

    def wrap_model(self, model):
        import deepspeed
        if self.device.type == "cpu" and not self.run_cfg.get("deepspeed_shm_comm", False):
            # DeepSpeed's optional CPU shared-memory all-reduce JIT-compiles (~40 s) on first use;
            # without it DeepSpeed falls back to torch.distributed (gloo).
            import importlib
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        _ensure_process_group()
        # DeepSpeed's ZeRO collectives still call the renamed torch.distributed functions every step.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)`"
                                r" is deprecated", category=FutureWarning)
        config = self.ds_config
        model = model.to(self.device)
        if "optimizer" in config:  # DeepSpeed builds its own (FusedAdam / CPUAdam) over our groups
            engine, optimizer, _, _ = deepspeed.initialize(
                model=model, model_parameters=[g for g in self.optimizer_param_groups() if g["params"]],
                config=config)
            self._optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        else:
            self._optimizer = self.build_optimizer()
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self._optimizer, config=config)
        logger.info("DeepSpeed engine: ZeRO stage %d, %s", engine.zero_optimization_stage(),
                    "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32")
        return engine

    def build_stepper(self):
        return DeepSpeedStepper(self.model, self.optimizer, self.lr_scheduler, self.accum_grad_iters,
                                self.amp_dtype, self.device)

    @property
    def unwrapped_model(self):
        return self._model

    # ---- checkpoints through the engine (trainable parameters only) ----------------------
    def write_state(self, tmp_dir, state):
        self.model.save_checkpoint(tmp_dir, tag=DS_TAG, client_state={"lavis_lite": state},
                                   save_latest=False, exclude_frozen_parameters=True)

    def read_state(self, ckpt_dir):
        # Frozen parameters are not in the checkpoint (exclude_frozen_parameters); they come from the
        # model's own initialisation, so the module load cannot be strict about them.
        _, client = self.model.load_checkpoint(ckpt_dir, tag=DS_TAG, load_module_strict=False,
                                               load_lr_scheduler_states=False)
        if client is None or "lavis_lite" not in client:
            raise RuntimeError(f"{ckpt_dir} holds no lavis_lite DeepSpeed checkpoint (tag {DS_TAG!r})")
        _check_trainable_names(self._model, ckpt_dir)
        return client["lavis_lite"]

    def load_model_weights(self, ckpt_dir):
        self.read_state(ckpt_dir)


def _check_trainable_names(model, ckpt_dir: str) -> None:
    """The names DeepSpeed recorded as saved must be exactly the model's trainable parameters."""
    from lavis_lite.tools.export_checkpoint import deepspeed_saved_names
    saved = deepspeed_saved_names(os.path.join(ckpt_dir, DS_TAG))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if saved is not None and saved != trainable:
        raise RuntimeError(f"DeepSpeed checkpoint {ckpt_dir} does not fit {type(model).__name__}: "
                           f"missing {sorted(trainable - saved)[:10]}, unexpected {sorted(saved - trainable)[:10]}")
