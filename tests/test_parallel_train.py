"""Seeds trained side by side (search.parallel): the same results as one after the other, errors named."""

import pytest

from profiler.spaces import load_space
from search.latency import SearchError
from search.parallel import TrainJob, plan, train_in_processes

SPACE = "tiny-mnist"


def test_plan_shares_the_cores_between_the_jobs():
    assert plan(2, 2) == (2, 1)
    assert plan(1, 2) == (1, 2)  # a single training keeps every core
    assert plan(3, 2) == (2, 1)
    assert plan(2, 8) == (2, 4)
    with pytest.raises(ValueError):
        plan(0, 2)


class _Bar:
    def __init__(self):
        self.calls = []

    def epoch_start(self, *a):
        self.calls.append("epoch_start")

    def step(self):
        self.calls.append("step")

    def epoch_end(self, row):
        self.calls.append("epoch_end")

    def message(self, text):
        self.calls.append(text)


def test_seeds_side_by_side_equal_the_same_seeds_one_after_the_other(tmp_path):
    from search.train import train_arch

    space = load_space(SPACE)
    arch = space.arch(space.uniform_choices("k3e3"))
    jobs = [TrainJob(out=str(tmp_path / f"p{s}"), seed=s, data="digits", epochs=1, batch_size=32, limit=300)
            for s in (0, 1)]
    saved = []
    bar = _Bar()
    par = train_in_processes(arch, jobs, processes=2, threads=1, progress=bar,
                             on_done=lambda i, r: saved.append(i))
    seq_bar = _Bar()
    seq = [train_arch(arch, "digits", tmp_path / f"s{s}", epochs=1, batch_size=32, seed=s, limit=300, threads=1,
                      progress=seq_bar if s == 0 else None) for s in (0, 1)]
    # one thread per training is deterministic: side by side changes nothing but the wall time
    assert [r["test_acc"] for r in par] == [r["test_acc"] for r in seq]
    assert [r["log"][0]["train_loss"] for r in par] == [r["log"][0]["train_loss"] for r in seq]
    assert par[0]["test_acc"] != par[1]["test_acc"] or par[0]["log"][0]["train_loss"] != par[1]["log"][0]["train_loss"]
    assert sorted(saved) == [0, 1]
    assert all((tmp_path / f"p{s}" / "weights.pt").exists() for s in (0, 1))
    # the bar follows one job: its epoch, every step of it, its end; and says what runs
    assert bar.calls[0].startswith("training seeds 0, 1 side by side: 2 processes of 1 thread")
    assert bar.calls.count("epoch_start") == 1 and bar.calls.count("epoch_end") == 1
    assert bar.calls[1:] == seq_bar.calls and seq_bar.calls.count("step") > 1


def test_a_failing_seed_is_named_with_its_reason(tmp_path):
    space = load_space(SPACE)
    arch = space.arch(space.uniform_choices("k3e3"))
    jobs = [TrainJob(out=str(tmp_path / f"p{s}"), seed=s, data="no-such-data", epochs=1, batch_size=32, limit=300)
            for s in (0, 1)]
    with pytest.raises(SearchError, match=r"training seed [01] into .*p[01] failed: .*no-such-data"):
        train_in_processes(arch, jobs, processes=2, threads=1)


def test_the_run_trains_its_seeds_side_by_side_and_keeps_each_one(tmp_path):
    from hwnas.pipeline import Progress, RunConfig, train_seeds

    space = load_space(SPACE)
    arch = space.arch(space.uniform_choices("k3e3"))
    cfg = RunConfig(out=str(tmp_path / "run"), db=str(tmp_path / "m.db"), backend="torch", space=SPACE,
                    data="digits", train_epochs=1, batch_size=32, limit=300, seeds=2, train_threads=0)
    out = tmp_path / "train"
    r = train_seeds(cfg, arch, out, Progress())
    assert r.seeds == (0, 1) and len(r.test_acc_seeds) == 2
    assert (out / "result.json").exists() and (out / "seed1" / "result.json").exists()
    assert r.weights == str(out / "weights.pt")
    # a second call reads both seeds back; with one seed gone, only that one is trained again
    stamp = (out / "result.json").stat().st_mtime_ns
    (out / "seed1" / "result.json").unlink()
    again = train_seeds(cfg, arch, out, Progress())
    assert (out / "result.json").stat().st_mtime_ns == stamp
    assert again.test_acc_seeds[0] == r.test_acc_seeds[0]
    assert (out / "seed1" / "result.json").exists() and 0 <= again.test_acc_seeds[1] <= 1
