"""The search loop (ProxylessNAS, Cai, Zhu, Han, ICLR 2019, section 3 and appendix) and the
from-scratch training of a found network.

Search: ``warmup_epochs`` epochs of weight steps only (paths sampled from the uniform initial
``p``), then weight steps on the train split alternating with architecture steps on the held-out
(valid) split, one every ``arch_every`` weight steps. Weights: SGD, momentum 0.9, Nesterov,
cosine learning rate per step; architecture: Adam (lr 1e-3, betas (0, 0.999)): the reference's
defaults. The candidates own their weights (``weights="separate"``) or share them
(``weights="shared"``: `search.supernet.SharedMBConv`). A checkpoint is written after every
epoch; `run_search(..., resume=True)` continues after the last complete epoch with the same
random streams, so a resumed run ends where an uninterrupted one would.

With width choices (a space with ``widths``) the weight steps draw each stage's width uniformly,
not from ``p``: the narrow widths are the first channels of the wide ones, so sampling from ``p``
stopped training the wide channels once ``p`` leaned to the narrow widths, the wide networks then
looked worse to the architecture steps, and ``p`` leaned further (tiny-mnist-w, Fashion-MNIST 5k,
target 0.131 ms: Kendall tau between inherited and from-scratch accuracy over 19 sub-networks
-0.02 with widths from ``p``, 0.33 with uniform widths, 0.31 with ops uniform too; the width
logits still learn from the architecture steps).

``weight_paths="sandwich"`` (BigNAS's sandwich rule, Once-for-All's progressive training uses the
largest network alike) adds the space's largest and smallest networks to every weight step. Measured
on the same task (target 0.131 ms, search seeds 0 and 1): the supernet's train accuracy after the
warm-up rose from 0.38-0.40 to 0.46-0.49, but Kendall tau fell from 0.33 (both seeds) to 0.15 (both),
at 3x the weight step's cost: not the default. ``weight_paths="distill"`` trains the same three, the
largest on the labels and the other two on its predictions (in-place distillation, BigNAS). On
tiny-mnist-w with 10,000 images (two search seeds) it brought the inherited accuracies to within about
a point of the from-scratch ones (the default's sit 3.5-4 points below them) without ranking them
better (tau 0.08 / 0.23): not the default either (benchmarks/README.md, supernet variants).

Data-parallel under ``torchrun``: when ``WORLD_SIZE > 1`` the process group is set up (gloo on
CPU, NCCL on CUDA), the weights are wrapped in `DistributedDataParallel`, each rank reads its shard,
and the architecture logits' gradients are averaged by hand; the paths are drawn from a generator
seeded the same on every rank, so every rank samples the same network at every step.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from profiler.blocks import ArchSpec
from profiler.spaces import load_space
from search.data import load_data
from search.latency import LOSSES, LatencyPredictor, LatencyTable, SearchError, check_target, latency_loss
from search.supernet import DEPTHS, MODES, WEIGHT_PATHS, WEIGHTS, Supernet

__all__ = ["SearchConfig", "SearchProgress", "run_search", "train_arch", "inherited_accuracy", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
_CKPT_VERSION = 1


@dataclass
class SearchConfig:
    """Options of one search; units in the names or the comments."""

    space: str
    data: str
    out: str
    epochs: int = 10
    warmup_epochs: int = 0
    batch_size: int = 64
    lr: float = 0.025  # weights, initial (cosine to 0)
    momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_every: int = 5  # weight steps per architecture step
    mode: str = "binary"  # binary | reinforce | all
    weights: str = "separate"  # separate (ProxylessNAS) | shared (superkernel + elastic expand; see search.supernet)
    # one | sandwich: each weight step also trains the largest and smallest network | distill: the sandwich,
    # the sampled path and the smallest on the largest's predictions
    weight_paths: str = "one"
    skip_drop: float = 0.0  # weight steps: each skippable layer skipped with this probability, else p (0..1)
    # any: each layer on its own weights | tail: a stage's k-th running layer on the k-th layer's (OFA's elastic depth)
    depth: str = "any"
    loss: str = "add"  # add | mul
    lam: float = 0.1  # additive loss weight, 1/ms
    beta: float = 0.3  # multiplicative loss exponent
    weight: float = 1.0  # hinge / abs losses: loss per 100 % of latency over (or off) the target, unitless
    lat_temperature: float = 1.0  # the latency term's E[LAT] under softmax(alpha / t); < 1: nearer the argmax network
    target_ms: float | None = None
    seed: int = 0
    augment: str = "auto"
    limit: int | None = None  # use only this many images of the data set (count)
    baseline_decay: float = 0.99  # REINFORCE moving-average baseline
    predictor: str = ""  # description of the predictor, recorded in arch.json
    threads: int = 1  # torch intra-op threads (count); more than the free cores makes steps far slower

    # options that may differ between a run and its resumption
    _RESUMABLE = ("out", "predictor", "threads")

    def check(self) -> None:
        """Refuse options that make no sense, before any work.

        Raises:
            SearchError: naming the option and what it takes.
        """
        check_training(self.epochs, self.batch_size, self.lr, self.threads, self.limit)
        if not _finite(self.arch_lr) or self.arch_lr <= 0:
            raise SearchError(f"--arch-lr {self.arch_lr}: give a positive, finite learning rate")
        for opt, v in (("--lambda", self.lam), ("--beta", self.beta), ("--weight", self.weight)):
            if not _finite(v) or v < 0:
                raise SearchError(f"{opt} {v}: give a finite number, 0 or more")
        # NaN compares false with everything, so it would slip through the loss checks below
        if self.target_ms is not None and not (_finite(self.target_ms) and self.target_ms > 0):
            raise SearchError(f"--target-ms {self.target_ms}: give a positive, finite latency in ms")
        if not _finite(self.lat_temperature):
            raise SearchError(f"--lat-temperature {self.lat_temperature}: give a positive, finite number")
        if self.mode not in MODES:
            raise SearchError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.weights not in WEIGHTS:
            raise SearchError(f"unknown weights {self.weights!r}; known: {', '.join(WEIGHTS)}")
        if self.weight_paths not in WEIGHT_PATHS:
            raise SearchError(f"--weight-paths {self.weight_paths}: use one of {', '.join(WEIGHT_PATHS)}")
        if self.weight_paths != "one" and self.mode == "all":
            raise SearchError(f"--weight-paths {self.weight_paths} samples paths; the all-paths mode runs every "
                              "path already")
        if not (_finite(self.skip_drop) and 0 <= self.skip_drop < 1):
            raise SearchError(f"--skip-drop {self.skip_drop}: give a share of weight steps from 0 to below 1")
        if self.depth not in DEPTHS:
            raise SearchError(f"--depth {self.depth}: use one of {', '.join(DEPTHS)}")
        if self.depth != "any" and self.mode == "all":
            raise SearchError(f"--depth {self.depth} routes the path that runs; the all-paths mode runs every path")
        if self.skip_drop > 0 and self.mode == "all":
            raise SearchError("--skip-drop samples paths; the all-paths mode runs every path already")
        if self.epochs < 1 or self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise SearchError("need epochs >= 1 and 0 <= warmup epochs <= epochs")
        if not self.lat_temperature > 0:
            raise SearchError("--lat-temperature must be positive (1: ProxylessNAS's expected latency)")
        if self.batch_size < 1 or self.arch_every < 1:
            raise SearchError("batch size and --arch-every must be at least 1")
        if self.loss == "mul" and (self.target_ms is None or self.target_ms <= 1.0):
            raise SearchError("the multiplicative loss needs --target-ms above 1 ms (log T must be positive); "
                              "use --loss ratio for faster targets")
        if self.loss in ("ratio", "ceiling", "hinge", "abs") and (self.target_ms is None or self.target_ms <= 0):
            raise SearchError(f"the {self.loss} loss needs a positive --target-ms")
        if self.loss not in LOSSES:
            raise SearchError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch_betas"] = list(self.arch_betas)
        return d


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_training(epochs: int, batch_size: int, lr: float, threads: int, limit: int | None) -> None:
    """Refuse training options that make no sense (counts below 1, a learning rate that is not a
    positive finite number), before the data is read or any folder is made.

    Raises:
        SearchError: naming the option.
    """
    for opt, n in (("--epochs", epochs), ("--batch-size", batch_size), ("--threads", threads)):
        if n < 1:
            raise SearchError(f"{opt} {n}: give a count of at least 1")
    if limit is not None and limit < 1:
        raise SearchError(f"--limit {limit}: give a count of at least 1 image")
    if not _finite(lr) or lr <= 0:
        raise SearchError(f"--lr {lr}: give a positive, finite learning rate")


class SearchProgress:
    """Callbacks of a search (the CLI draws rich bars with them); all optional."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, phase: str) -> None: ...

    def step(self) -> None: ...

    def epoch_end(self, row: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


# ---- distributed --------------------------------------------------------------------------

@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return _Dist(world, dist.get_rank(), device)


def _allreduce_mean(tensors: list[torch.Tensor], d: _Dist) -> None:
    if d.world <= 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t)
        t.div_(d.world)


def _allreduce_sum(values: list[float], d: _Dist) -> list[float]:
    if d.world <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def _nhwc(net: nn.Module) -> nn.Module:
    """``net`` with its 4-d weights in channels-last memory layout. The arithmetic is the same; oneDNN's
    depthwise and 1x1 convolutions are faster on it: a training step of the tiny-mnist k3e6 network
    (batch 64, 2 threads) took 128 ms instead of 218 ms, a shared-weight supernet step 101 instead of
    169 ms. Saved weights load into a plain (contiguous) network unchanged."""
    return net.to(memory_format=torch.channels_last)


def _loader(ds, batch: int, shuffle: bool, seed: int, epoch: int, d: _Dist, drop_last: bool) -> DataLoader:
    """Shuffled per epoch from (seed, epoch): a resumed epoch reads the same batches."""
    if d.world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, d.world, d.rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=drop_last)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g, drop_last=drop_last)


# ---- checkpoints -----------------------------------------------------------------------------

def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_log(rows: list[dict[str, Any]], out: Path) -> None:
    (out / "log.json").write_text(json.dumps(rows, indent=1))
    if rows:
        cols = list(rows[0])
        with open(out / "log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})


def _load_checkpoint(path: Path, cfg: SearchConfig) -> dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which and what to do
        raise SearchError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to start again") from None
    if not isinstance(ck, dict) or ck.get("version") != _CKPT_VERSION:
        raise SearchError(f"{path}: not a search checkpoint of this version; delete it to start again")
    old, new = ck["config"], cfg.to_dict()
    for k in new:
        # an option added after the checkpoint was written counts as its default
        if k not in SearchConfig._RESUMABLE and old.get(k, getattr(SearchConfig, k, None)) != new[k]:
            raise SearchError(f"{path} was written with {k}={old.get(k)!r}, not {new[k]!r}; "
                              "resume with the same options or choose another --out")
    return ck


# ---- the search --------------------------------------------------------------------------------

@dataclass
class SearchResult:
    arch: ArchSpec
    log: list[dict[str, Any]]
    out: Path
    resumed_from: int | None  # the first epoch run by this call, when resumed
    table: LatencyTable


@contextlib.contextmanager
def _calibrated_bn(net: Supernet, choices: list[int], calib, d: _Dist, batches: int = 10):
    """Run the network ``choices`` with its BatchNorm statistics re-estimated on ``batches``
    training batches; the supernet's statistics (which mix every sampled path) are put back on
    exit, so training and a resumed run are not disturbed (subnetwork BN calibration, as in
    Once-for-All, Cai et al., ICLR 2020)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in bns]
    try:
        with torch.no_grad(), net.fixed_paths(choices):
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batches
            net.train()
            for i, (x, _) in enumerate(calib):
                if i >= batches:
                    break
                net(x.to(d.device))
            net.eval()
            yield
    finally:
        for m, (mean, var, n, mom) in zip(bns, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
            m.momentum = mom
        net.train()


def _accuracy(net: Supernet, ds, batch: int, d: _Dist) -> float:
    """Top-1 accuracy (share) of ``net`` as it is set (paths fixed, eval mode) on ``ds``."""
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=max(batch, 128)):
            x, y = x.to(d.device), y.to(d.device)
            correct += int((net(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def run_search(cfg: SearchConfig, predictor: LatencyPredictor, resume: bool = False,
               progress: SearchProgress | None = None) -> SearchResult:
    """Search ``cfg.space`` on ``cfg.data`` with the latency of ``predictor``; write ``cfg.out``.

    Refuses (`SearchError`, before any training) a target below the fastest network the space can
    make, a predictor that lacks a candidate, a data set it cannot read.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        return _run_search(cfg, predictor, resume, progress)
    finally:
        torch.set_num_threads(before)


@dataclass
class _Search:
    """What one search carries from its set-up through its epochs to its result (the recipe's state)."""

    cfg: SearchConfig
    space: Any
    table: LatencyTable
    data: Any
    out: Path
    d: _Dist
    net: Supernet
    model: nn.Module  # the supernet, or its DistributedDataParallel wrapper
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator  # path sampling: the same stream on every rank
    baseline: float | None = None  # REINFORCE's moving average of the reward
    width_baseline: float | None = None  # moving average of the arch-step loss: the width logits' score-function baseline
    log: list[dict[str, Any]] = field(default_factory=list)
    sandwich: list[list[int]] = field(default_factory=list)  # the largest and smallest networks' choices, if trained
    start: int = 0  # the first epoch this call runs
    resumed_from: int | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT


def _run_search(cfg: SearchConfig, predictor: LatencyPredictor, resume: bool,
                progress: SearchProgress | None) -> SearchResult:
    """The search recipe: set up (or resume), one epoch at a time with a checkpoint after each, derive."""
    progress = progress or SearchProgress()
    s = _setup(cfg, predictor, resume, progress)
    for epoch in range(s.start, cfg.epochs):
        row = _epoch(s, epoch, progress)
        s.log.append(row)
        if s.d.main:
            _write_log(s.log, s.out)
            _checkpoint(s, epoch)
        progress.epoch_end(row)
    return _finish(s, predictor)


def _setup(cfg: SearchConfig, predictor: LatencyPredictor, resume: bool, progress: SearchProgress) -> _Search:
    """Check the options, read the data, build the supernet and its optimisers; resume from the
    checkpoint where asked. Everything that can be refused is refused here, before any training."""
    cfg.check()
    space = load_space(cfg.space)
    table = LatencyTable.build(space, predictor)
    check_target(table, cfg.target_ms)
    data = load_data(cfg.data, space.input_size, space.in_channels, cfg.seed, cfg.augment, cfg.limit)
    if data.num_classes > space.num_classes:
        raise SearchError(f"{cfg.data} has {data.num_classes} classes; the space {space.name!r} classifies "
                          f"{space.num_classes}")
    out = Path(cfg.out)
    if (out / CHECKPOINT).exists() and not resume:
        raise SearchError(f"{out} holds a search checkpoint; pass --resume to continue it or choose another --out")
    d = _dist_setup()
    # may refuse the space
    net = _nhwc(Supernet(space, cfg.mode, cfg.seed, weights=cfg.weights, depth=cfg.depth).to(d.device))
    if d.main:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed + d.rank)  # augmentations
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                            weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas), eps=1e-8)
    steps_per_epoch = len(_loader(data.train, cfg.batch_size, True, cfg.seed, 0, d, True))
    if steps_per_epoch == 0:
        raise SearchError(f"{cfg.data}: fewer training images than one batch ({cfg.batch_size}); lower --batch-size")
    if len(data.valid) < d.world:
        raise SearchError(f"{cfg.data}: too few images for a held-out split ({len(data.valid)}); give more images")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs * steps_per_epoch)
    s = _Search(cfg, space, table, data, out, d, net, net, w_opt, a_opt, sched, torch.Generator().manual_seed(cfg.seed))
    if resume and s.ckpt_path.exists():
        ck = _load_checkpoint(s.ckpt_path, cfg)
        net.load_state_dict(ck["net"])
        w_opt.load_state_dict(ck["w_opt"])
        a_opt.load_state_dict(ck["a_opt"])
        sched.load_state_dict(ck["sched"])
        s.gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"][d.rank] if d.rank < len(ck["torch_rng"]) else ck["torch_rng"][0])
        s.baseline, s.log, s.start = ck["baseline"], list(ck["log"]), int(ck["epoch"]) + 1
        s.width_baseline = ck.get("width_baseline")
        progress.message(f"resuming {out} after epoch {s.start - 1} of {cfg.epochs}")
    s.resumed_from = s.start if resume and s.start > 0 else None
    if cfg.weight_paths in ("sandwich", "distill"):
        s.sandwich = sandwich_ends(space, table)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # the logits are updated by hand (binary gates, masks, rescaling); keep them out of DDP
        DDP._set_params_and_buffers_to_ignore_for_model(net, [n for n, _ in net.named_parameters() if n.endswith("alpha")])
        s.model = DDP(net, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                      find_unused_parameters=True)
    return s


def _epoch(s: _Search, epoch: int, progress: SearchProgress) -> dict[str, Any]:
    """One epoch: a weight step on a sampled path per batch, an architecture step on the held-out
    split every ``arch_every`` batches after the warm-up; returns the epoch's log row."""
    cfg, d, net = s.cfg, s.d, s.net
    t0 = time.perf_counter()
    warm = epoch < cfg.warmup_epochs
    train_loader = _loader(s.data.train, cfg.batch_size, True, cfg.seed, epoch, d, True)
    valid_iter = _cycle(lambda e=epoch: _loader(s.data.valid, cfg.batch_size, True, cfg.seed + 1, e, d, False))
    progress.epoch_start(epoch, cfg.epochs, len(train_loader), "warm-up" if warm else "search")
    sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "arch_steps": 0.0, "arch_loss": 0.0}
    alphas = net.arch_parameters()
    for step, (x, y) in enumerate(train_loader):
        x, y = x.to(d.device), y.to(d.device)
        # -- weight step: one sampled path per layer (all paths in the DARTS baseline)
        if cfg.mode != "all":
            net.sample_paths(s.gen, widths=False, skip_drop=cfg.skip_drop)
        if net.width_stages:
            # each stage's width drawn uniformly, not from p (see the module's docstring)
            net.sample_widths(s.gen, uniform=True)
        logits, loss = _weight_grads(s, x, y)
        s.w_opt.step()
        s.sched.step()
        for a in alphas:
            a.grad = None
        sums["loss"] += float(loss.detach()) * len(y)
        sums["correct"] += float((logits.argmax(1) == y).sum())
        sums["seen"] += len(y)
        # -- architecture step on the held-out split
        if not warm and (step + 1) % cfg.arch_every == 0:
            xv, yv = next(valid_iter)
            al, s.baseline, s.width_baseline = _arch_step(net, cfg, s.table, s.a_opt, s.gen, xv.to(d.device),
                                                          yv.to(d.device), d, s.baseline, s.width_baseline)
            sums["arch_loss"] += al
            sums["arch_steps"] += 1
        progress.step()
    loss_sum, correct, seen = _allreduce_sum([sums["loss"], sums["correct"], sums["seen"]], d)
    choices = net.argmax_choices()
    with torch.no_grad():
        exp_ms = float(s.table.expected_ms(net.probs()))
        loss_ms = float(s.table.expected_ms(net.probs(cfg.lat_temperature)))
    # the argmax network, BN recalibrated, on the held-out split each epoch; the test split is scored
    # once, after the last epoch (scoring 10,000 test images every epoch cost more than the epoch's
    # training on 5,000, and a test split looked at every epoch is no longer held out)
    with _calibrated_bn(net, choices, _loader(s.data.train, cfg.batch_size, True, cfg.seed + 2, epoch, d, True), d):
        valid_acc = _accuracy(net, s.data.valid, cfg.batch_size, d)
        test_acc = _accuracy(net, s.data.test, cfg.batch_size, d) if epoch == cfg.epochs - 1 else None
    return {"epoch": epoch, "phase": "warm-up" if warm else "search",
            "train_loss": round(loss_sum / max(seen, 1), 5), "train_acc": round(correct / max(seen, 1), 5),
            "valid_acc": round(valid_acc, 5), "test_acc": None if test_acc is None else round(test_acc, 5),
            "expected_ms": round(exp_ms, 5), "argmax_ms": round(s.table.arch_ms(choices), 5),
            "loss_expected_ms": round(loss_ms, 5),
            "arch_steps": int(sums["arch_steps"]),
            "arch_loss": round(sums["arch_loss"] / sums["arch_steps"], 5) if sums["arch_steps"] else None,
            "lr": round(s.sched.get_last_lr()[0], 6), "choices": choices,
            "seconds": round(time.perf_counter() - t0, 2)}


def _weight_grads(s: _Search, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights' gradients of one weight step on the batch (x, y), for the path that is set: that
    path, then (sandwich) the space's largest and smallest networks, gradients summed and under DDP
    reduced once, by the last backward. distill: the largest first, on the labels; the set path and
    the smallest then learn the largest's predictions (its softmax, detached) by KL divergence, not
    the labels. Returns the set path's logits and its cross-entropy on the labels (for the log)."""
    cfg, d, net = s.cfg, s.d, s.net
    s.w_opt.zero_grad(set_to_none=True)
    paths: list[list[int] | None] = ([s.sandwich[0], None, s.sandwich[1]] if cfg.weight_paths == "distill"
                                     else [None, *s.sandwich])
    soft = None
    for k, ends in enumerate(paths):
        quiet = k < len(paths) - 1 and d.world > 1
        with (s.model.no_sync() if quiet else contextlib.nullcontext()), \
                (net.fixed_paths(ends) if ends else contextlib.nullcontext()):
            out = s.model(x)
            if soft is None:
                step_loss = F.cross_entropy(out, y)
            else:
                step_loss = F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean")
            step_loss.backward()
        if cfg.weight_paths == "distill" and k == 0:
            soft = F.softmax(out.detach(), 1)
        if ends is None:  # the set path: its cross-entropy is the step's loss unless it learnt soft labels
            logits = out.detach()
            loss = step_loss.detach() if soft is None else F.cross_entropy(logits, y)
    return logits, loss


def sandwich_ends(space, table: LatencyTable) -> list[list[int]]:
    """The choices of the space's largest and smallest networks (BigNAS's sandwich rule): every stage
    at its widest (narrowest) width and each layer at its slowest (fastest) candidate by ``table``,
    never the zero op (a skipped layer trains nothing)."""
    ends = []
    for pick, wi in ((max, len(space.widths) - 1), (min, 0)):
        ws = [wi] * space.width_stages
        sub = table.at_widths(ws)
        ops = []
        for i, lat in zip(space.searchable, sub.layers):
            real = [j for j, c in enumerate(space.layers[i].candidates) if c.kind != "zero"]
            ops.append(pick(real, key=lambda j: float(lat[j])))
        ends.append(ops + ws)
    return ends


def accuracy_text(row: dict[str, Any]) -> str:
    """An epoch row's accuracies for a person: train, held-out (search epochs) and test (where scored)."""
    parts = [f"train acc {row['train_acc']:.3f}"] if row.get("train_acc") is not None else []
    if row.get("valid_acc") is not None:
        parts.append(f"held-out acc {row['valid_acc']:.3f}")
    if row.get("test_acc") is not None:
        parts.append(f"test acc {row['test_acc']:.3f}")
    return ", ".join(parts)


def _checkpoint(s: _Search, epoch: int) -> None:
    """Everything a resumed search needs to go on exactly as if it had not stopped."""
    _save_atomic({"version": _CKPT_VERSION, "config": s.cfg.to_dict(), "epoch": epoch,
                  "net": s.net.state_dict(), "w_opt": s.w_opt.state_dict(), "a_opt": s.a_opt.state_dict(),
                  "sched": s.sched.state_dict(), "gen": s.gen.get_state(), "torch_rng": [torch.get_rng_state()],
                  "baseline": s.baseline, "width_baseline": s.width_baseline, "log": s.log}, s.ckpt_path)


def _finish(s: _Search, predictor: LatencyPredictor) -> SearchResult:
    """The most likely network, with its predicted latency, written as arch.json (+ its weights)."""
    cfg, net, table = s.cfg, s.net, s.table
    choices = net.argmax_choices()
    last = s.log[-1]
    warmed = [r for r in s.log if r["phase"] == "warm-up"]
    arch = net.derive(meta={
        "predicted_ms": round(table.arch_ms(choices), 6), "expected_ms": last["expected_ms"],
        "fastest_ms": round(table.min_ms(), 6), "slowest_ms": round(table.max_ms(), 6),
        "target_ms": cfg.target_ms, "loss": cfg.loss, "mode": cfg.mode, "weights": cfg.weights, "predictor": cfg.predictor,
        "data": cfg.data, "test_acc_supernet": last["test_acc"], "epochs": cfg.epochs,
        # the supernet's own quality: how well its weights had learnt before the architecture moved
        "train_acc_after_warmup": warmed[-1]["train_acc"] if warmed else None})
    net_ms = getattr(predictor, "predict_network_ms", None)  # optional: block sum + per-network overhead
    if net_ms is not None:
        try:
            arch.meta["predicted_network_ms"] = round(float(net_ms(arch)), 6)
        except (KeyError, ValueError, TypeError):
            pass  # the block sum above stays the prediction
    if s.d.main:
        (s.out / "arch.json").write_text(arch.to_json())
        # the found network's weights, with BatchNorm statistics of its own
        calib = _loader(s.data.train, cfg.batch_size, True, cfg.seed + 3, 0, s.d, True)
        with _calibrated_bn(net, choices, calib, s.d):
            torch.save(net.derived_state_dict(choices), s.out / "weights.pt")
    return SearchResult(arch, s.log, s.out, s.resumed_from, table)


def inherited_accuracy(search_dir: str | Path, choices: Sequence[Sequence[int]], threads: int = 1,
                       batches: int = 10) -> list[float]:
    """Test accuracy (share) of each sub-network ``choices[i]`` with the weights it inherits from the
    finished search in ``search_dir`` (its last checkpoint), BatchNorm re-estimated on ``batches``
    training batches for that sub-network (Once-for-All's BN calibration). How well this ranks
    networks against training each from scratch is what makes a short search's accuracy term mean
    something.

    Raises `SearchError` where ``search_dir`` holds no readable checkpoint.
    """
    path = Path(search_dir) / CHECKPOINT
    if not path.exists():
        raise SearchError(f"{search_dir}: no search checkpoint; run the search first")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        cfg = SearchConfig(**ck["config"])
    except Exception as e:
        raise SearchError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        space = load_space(cfg.space)
        data = load_data(cfg.data, space.input_size, space.in_channels, cfg.seed, cfg.augment, cfg.limit)
        d = _Dist()
        net = _nhwc(Supernet(space, cfg.mode, cfg.seed, weights=cfg.weights, depth=cfg.depth))
        net.load_state_dict(ck["net"])
        out = []
        for i, c in enumerate(choices):
            calib = _loader(data.train, cfg.batch_size, True, cfg.seed + 4, i, d, True)
            # the calibration batches are augmented: the same seed per network gives the same numbers
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 4 + i)
                with _calibrated_bn(net, list(c), calib, d, batches):
                    out.append(_accuracy(net, data.test, cfg.batch_size, d))
        return out
    finally:
        torch.set_num_threads(before)


def _cycle(make):
    while True:
        n = 0
        for item in make():
            n += 1
            yield item
        if n == 0:
            raise SearchError("the held-out split is empty; give more images")


def _arch_step(net: Supernet, cfg: SearchConfig, table: LatencyTable, opt: torch.optim.Optimizer,
               gen: torch.Generator, x: torch.Tensor, y: torch.Tensor, d: _Dist,
               baseline: float | None, width_baseline: float | None = None) -> tuple[float, float | None, float | None]:
    """One update of the architecture logits; returns (loss, REINFORCE baseline, width baseline).

    With width choices the stage widths are sampled (REINFORCE: with the paths) and their logits
    get, besides the expected latency's exact gradient, the score-function estimate of the loss's:
    ``(loss - width_baseline) * grad log p(widths)`` (see `search.supernet`)."""
    weights = net.weight_parameters()
    alphas = net.arch_parameters()
    for p in weights:  # the architecture step needs no weight gradients (and no weight activations)
        p.requires_grad_(False)
    try:
        opt.zero_grad(set_to_none=True)
        if cfg.mode == "reinforce":
            with torch.no_grad():
                choices = net.sample_paths(gen)
                ce = F.cross_entropy(net(x), y)
                lat = torch.tensor(table.arch_ms(choices))
                loss = float(latency_loss(ce, lat, cfg.loss, cfg.lam, cfg.target_ms, cfg.beta, cfg.weight))
            (loss,) = _allreduce_sum([loss], d)
            loss /= d.world
            reward = -loss
            advantage = reward - (reward if baseline is None else baseline)
            baseline = reward if baseline is None else cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * reward
            logp = net.log_prob(choices)  # ops and, with width choices, the stage widths
            (-advantage * logp).backward()
            opt.step()
            return loss, baseline, width_baseline
        before = [a.detach().clone() for a in alphas]
        if cfg.mode == "binary":
            net.sample_pairs(gen)
        if net.width_stages:
            net.sample_widths(gen)
        ce = F.cross_entropy(net(x), y)
        lat = table.expected_ms(net.probs(cfg.lat_temperature))
        loss_t = latency_loss(ce, lat, cfg.loss, cfg.lam, cfg.target_ms, cfg.beta, cfg.weight)
        objective = loss_t
        if net.width_stages:
            (value,) = _allreduce_sum([float(loss_t.detach())], d)
            value /= d.world
            advantage = value - (value if width_baseline is None else width_baseline)
            width_baseline = value if width_baseline is None else \
                cfg.baseline_decay * width_baseline + (1 - cfg.baseline_decay) * value
            objective = loss_t + advantage * net.width_log_prob()
        objective.backward()
        _allreduce_mean([a.grad for a in alphas if a.grad is not None], d)
        if cfg.mode == "binary":
            net.mask_arch_grads_to_pairs()
            opt.step()
            net.rescale_pairs(before)
            net.clear_pairs()
        else:
            opt.step()
        return float(loss_t.detach()), baseline, width_baseline
    finally:
        for p in weights:
            p.requires_grad_(True)


# ---- training a found network from scratch ----------------------------------------------------

def train_arch(arch: ArchSpec, data: str, out: str | Path, epochs: int = 10, batch_size: int = 64,
               lr: float = 0.05, weight_decay: float = 4e-5, seed: int = 0, limit: int | None = None,
               augment: str = "auto", threads: int = 1, progress: SearchProgress | None = None) -> dict[str, Any]:
    """Train ``arch`` from fresh weights on the train + valid splits; report top-1 on the test split.

    Writes ``out/weights.pt`` (state_dict of ``arch.build()``) and ``out/train_log.json``.

    Raises:
        SearchError: options that make no sense (`check_training`), data it cannot read.
    """
    from search.supernet import _reinit

    check_training(epochs, batch_size, lr, threads, limit)
    progress = progress or SearchProgress()
    in_c = arch.blocks[0].in_c
    ds = load_data(data, arch.input_size, in_c, seed, augment, limit)
    if ds.num_classes > arch.num_classes:
        raise SearchError(f"{data} has {ds.num_classes} classes; the network classifies {arch.num_classes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    net = _nhwc(arch.build().train())
    _reinit(net)
    train_set = torch.utils.data.ConcatDataset([ds.train, ds.valid])
    d = _Dist()
    steps = len(_loader(train_set, batch_size, True, seed, 0, d, True))
    if steps == 0:
        raise SearchError(f"{data}: fewer training images than one batch ({batch_size}); lower --batch-size")
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    log = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        progress.epoch_start(epoch, epochs, steps, "train")
        loss_sum = correct = seen = 0.0
        for x, y in _loader(train_set, batch_size, True, seed, epoch, d, True):
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
            progress.step()
        test_acc = None
        if epoch == epochs - 1:  # the test split is scored once, at the end (see `_epoch`)
            net.eval()
            tc = tn = 0
            with torch.no_grad():
                for x, y in DataLoader(ds.test, batch_size=256):
                    tc += int((net(x).argmax(1) == y).sum())
                    tn += len(y)
            net.train()
            test_acc = round(tc / max(tn, 1), 5)
        row = {"epoch": epoch, "train_loss": round(loss_sum / seen, 5), "train_acc": round(correct / seen, 5),
               "test_acc": test_acc, "seconds": round(time.perf_counter() - t0, 2)}
        log.append(row)
        progress.epoch_end(row)
    torch.save(net.state_dict(), out / "weights.pt")
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return {"arch": arch.name, "data": ds.description, "epochs": epochs, "test_acc": log[-1]["test_acc"],
            "test_images": len(ds.test), "log": log, "weights": str(out / "weights.pt")}
