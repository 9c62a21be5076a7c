"""The search: binary-gate gradients, path sampling, the latency table and loss, a real search on
the tiny space with real latencies (torch backend, quick protocol), resume, export, bad input."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwnas.cli import main
from profiler.blocks import ArchSpec
from profiler.harness import profile
from profiler.measurement import TimingProtocol
from profiler.spaces import load_space
from profiler.store import Store
from search.latency import LatencyTable, SearchError, check_target, latency_loss
from search.supernet import MixedOp, Supernet
from search.train import SearchConfig, SearchProgress, _arch_step, run_search

SPACE = "tiny"


class TablePredictor:
    """The stored medians of a store as a predictor (zero op -> 0 ms; unknown key -> KeyError)."""

    def __init__(self, ms: dict[str, float]):
        self.ms = ms

    def predict_ms(self, blocks):
        return np.array([0.0 if b.kind == "zero" else self.ms[b.key] for b in blocks])


@pytest.fixture(scope="module")
def measured(tmp_path_factory, cache_dir):
    """Every block of the tiny space timed with eager torch (real, quick protocol): (db, predictor)."""
    db = tmp_path_factory.mktemp("search-db") / "torch.db"
    res = profile(load_space(SPACE).blocks(), "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir)
    assert not res.failed
    with Store(db) as st:
        df = st.dataframe(status="ok")
    return str(db), TablePredictor(dict(zip(df.block_key, df.median_ms.astype(float))))


# ---- mixed op: binary gates -------------------------------------------------------------------

class Scale(nn.Module):
    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.c * x


def test_binary_gate_gradient_matches_hand_computation():
    op = MixedOp([Scale(1.0), Scale(2.0), Scale(3.0)], mode="binary")
    with torch.no_grad():
        op.alpha.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    w = torch.tensor([0.3, 0.7, -1.1])
    op.set_pair((0, 2), active=2)
    y = op(x)
    assert torch.allclose(y, 3.0 * x)
    (w * y).sum().backward()
    # by hand: dL/dg_j = <w, o_j(x)> = c_j <w, x>; p over the pair = softmax(alpha_0, alpha_2)
    wx = float((w * x).sum())
    g = [1.0 * wx, 3.0 * wx]
    e0, e2 = math.exp(0.1), math.exp(0.3)
    p = [e0 / (e0 + e2), e2 / (e0 + e2)]
    want0 = g[0] * p[0] * (1 - p[0]) + g[1] * p[1] * (0 - p[0])
    want2 = g[0] * p[0] * (0 - p[1]) + g[1] * p[1] * (1 - p[1])
    assert op.last_gate_grad.tolist() == pytest.approx(g, rel=1e-6)
    assert op.alpha.grad.tolist() == pytest.approx([want0, 0.0, want2], rel=1e-5, abs=1e-7)
    assert torch.allclose(x.grad, 3.0 * w)  # dL/dx through the active path only


def test_only_one_path_runs_forward_in_binarised_mode():
    ops = [Scale(1.0), Scale(2.0), Scale(3.0), Scale(4.0)]
    op = MixedOp(ops, mode="binary")
    x = torch.randn(5, requires_grad=True)
    op.set_path(1)
    op(x).sum().backward()
    assert [o.calls for o in ops] == [0, 1, 0, 0]
    op.set_pair((3, 0), active=3)
    y = op(x)
    assert [o.calls for o in ops] == [0, 1, 0, 1]  # forward: the active path alone
    y.sum().backward()
    assert [o.calls for o in ops] == [1, 1, 0, 1]  # backward: the other sampled path once, for its gate
    darts = [Scale(1.0), Scale(2.0), Scale(3.0)]
    MixedOp(darts, mode="all")(x)
    assert [o.calls for o in darts] == [1, 1, 1]


def test_supernet_stores_one_path_of_activations():
    """Saved tensors of a binarised step against the all-paths (DARTS) baseline on the tiny space."""
    space = load_space(SPACE)
    x = torch.randn(8, 3, 32, 32)

    def saved_bytes(net, setup):
        setup(net)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x).sum().backward()
        return total

    g = torch.Generator().manual_seed(0)
    one = saved_bytes(Supernet(space, "binary"), lambda n: n.sample_paths(g))
    pair = saved_bytes(Supernet(space, "binary"), lambda n: n.sample_pairs(g))
    allp = saved_bytes(Supernet(space, "all"), lambda n: None)
    assert allp > 1.5 * one and allp > 1.5 * pair


def test_unsampled_probabilities_unchanged_after_an_arch_step(measured):
    _, pred = measured
    space = load_space(SPACE)
    table = LatencyTable.build(space, pred)
    net = Supernet(space, "binary")
    with torch.no_grad():
        for m in net.mixed:
            m.alpha.copy_(torch.randn(len(m.alpha)) * 0.5)
    cfg = SearchConfig(space=SPACE, data="digits", out="-", arch_lr=0.1, lam=5.0)
    opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    from search.train import _Dist

    for _ in range(3):
        before = [p.detach().clone() for p in net.probs()]
        state = gen.get_state()
        pairs = net.sample_pairs(torch.Generator().set_state(state))  # the pairs _arch_step will draw
        _arch_step(net, cfg, table, opt, gen, x, y, _Dist(), None)
        after = [p.detach() for p in net.probs()]
        moved = False
        for (pair, _), b, a in zip(pairs, before, after):
            rest = [j for j in range(len(b)) if j not in pair]
            assert torch.allclose(a[rest], b[rest], atol=1e-6)
            assert float(a[list(pair)].sum()) == pytest.approx(float(b[list(pair)].sum()), abs=1e-6)
            moved |= not torch.allclose(a[list(pair)], b[list(pair)])
        assert moved


# ---- latency table and loss --------------------------------------------------------------------

def test_expected_latency_equals_hand_sum(measured):
    _, pred = measured
    space = load_space(SPACE)
    table = LatencyTable.build(space, pred)
    fixed = sum(pred.ms[layer.candidates[0].key] for layer in space.layers if not layer.searchable)
    assert table.fixed_ms == pytest.approx(fixed)
    probs = [torch.softmax(torch.arange(len(layer.candidates), dtype=torch.float32), 0)
             for layer in space.layers if layer.searchable]
    hand = fixed
    for p, i in zip(probs, space.searchable):
        for pj, c in zip(p.tolist(), space.layers[i].candidates):
            hand += pj * (0.0 if c.kind == "zero" else pred.ms[c.key])
    assert float(table.expected_ms(probs)) == pytest.approx(hand, rel=1e-6)
    fastest = fixed + sum(min(0.0 if c.kind == "zero" else pred.ms[c.key] for c in space.layers[i].candidates)
                          for i in space.searchable)
    assert table.min_ms() == pytest.approx(fastest)
    assert table.arch_ms([0, 0, 0]) == pytest.approx(
        sum(pred.ms[b.key] for b in space.arch([0, 0, 0]).blocks if b.kind != "zero"))
    with pytest.raises(SearchError, match="below the fastest"):
        check_target(table, fastest * 0.5)
    lat = torch.tensor(4.0)
    assert float(latency_loss(torch.tensor(2.0), lat, "add", lam=0.5)) == pytest.approx(4.0)
    assert float(latency_loss(torch.tensor(2.0), lat, "mul", target_ms=2.0, beta=0.3)) == pytest.approx(2.0 * 2 ** 0.3)


def test_missing_candidate_is_refused(measured):
    _, pred = measured
    space = load_space(SPACE)
    partial = TablePredictor({k: v for k, v in list(pred.ms.items())[1:]})
    with pytest.raises(SearchError, match="has no latency"):
        LatencyTable.build(space, partial)


def test_latency_loss_moves_probability_to_faster_ops(measured):
    _, pred = measured
    space = load_space(SPACE)
    table = LatencyTable.build(space, pred)
    net = Supernet(space, "binary")
    cfg = SearchConfig(space=SPACE, data="digits", out="-", arch_lr=0.05, lam=50.0)
    opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    from search.train import _Dist

    e0 = float(table.expected_ms(net.probs()))
    for _ in range(40):
        _arch_step(net, cfg, table, opt, gen, x, y, _Dist(), None)
    e1 = float(table.expected_ms(net.probs()))
    assert e1 < e0 - 0.3 * (e0 - table.min_ms())
    for p, row in zip(net.probs(), table.layers):
        assert float(p[int(np.argmin(row))]) > 1.0 / len(row)  # the fastest op gained


# ---- whole searches -----------------------------------------------------------------------------

def test_search_end_to_end_cli_export_verify_train(measured, tmp_path, capsys, cache_dir):
    db, _ = measured
    out = tmp_path / "run"
    assert main(["search", "--space", SPACE, "--data", "digits", "--db", db, "--backend", "torch", "--out", str(out),
                 "--epochs", "1", "--batch-size", "32", "--arch-every", "2", "--arch-lr", "0.05",
                 "--export", "executorch,tvm", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    arch = ArchSpec.from_json((out / "arch.json").read_text())
    assert arch.keys == res["blocks"] and len(arch.meta["probabilities"]) == 3
    assert res["fastest_ms"] <= res["predicted_ms"] <= res["slowest_ms"]
    row = res["log"][0]
    assert {"train_acc", "valid_acc", "test_acc", "expected_ms", "argmax_ms"} <= set(row) and row["arch_steps"] > 0
    assert 0 <= row["valid_acc"] <= 1 and 0 <= row["test_acc"] <= 1  # one epoch: the last, so test is scored
    assert (out / "log.csv").read_text().startswith("epoch,")
    for b in ("executorch", "tvm"):
        assert "path" in res["exported"][b], res["exported"][b]
    # the exported .pte computes what the trained network computes
    from executorch.runtime import Runtime

    from search.export import load_network

    net = load_network(out / "arch.json", out / "weights.pt")
    x = arch.example_input()
    pte = Runtime.get().load_program((out / "model.pte").read_bytes()).load_method("forward")
    assert torch.allclose(pte.execute([x])[0], net(x), atol=1e-4)

    assert main(["verify", "--arch", str(out / "arch.json"), "--backend", "torch", "--quick",
                 "--cache-dir", str(cache_dir), "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["predicted_ms"] == pytest.approx(res["predicted_ms"]) and v["measured_ms"] > 0

    assert main(["train", "--arch", str(out / "arch.json"), "--data", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "trained"), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert 0.0 <= t["test_acc"] <= 1.0 and (tmp_path / "trained" / "weights.pt").exists()


def test_shared_weights_search_end_to_end_cli(measured, tmp_path, capsys):
    """hwnas search --weights shared: a tiny search runs, the found network is a plain ArchSpec of
    the space whose weights (copies of the shared slices) load strictly into its own module."""
    db, _ = measured
    out = tmp_path / "shared"
    assert main(["search", "--space", SPACE, "--data", "digits", "--db", db, "--backend", "torch", "--out", str(out),
                 "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32", "--arch-every", "2",
                 "--arch-lr", "0.05", "--limit", "600", "--weights", "shared", "--export", "", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    arch = ArchSpec.from_json((out / "arch.json").read_text())
    assert arch.meta["weights"] == "shared" and res["log"][1]["arch_steps"] > 0
    assert arch.blocks == load_space(SPACE).arch(arch.meta["choices"]).blocks
    from search.export import load_network

    net = load_network(out / "arch.json", out / "weights.pt")  # strict load into ArchSpec.build()
    assert net(arch.example_input()).shape == (1, 10)
    assert res["log"][1]["train_loss"] < res["log"][0]["train_loss"]
    assert any(max(p) > min(p) + 1e-4 for p in arch.meta["probabilities"])  # the architecture steps moved
    # the held-out split is scored every epoch, the test split once, after the last
    assert [r["test_acc"] is None for r in res["log"]] == [True, False]
    assert all(0 <= r["valid_acc"] <= 1 for r in res["log"]) and arch.meta["test_acc_supernet"] == res["log"][1]["test_acc"]


class _StopAt(SearchProgress):
    def __init__(self, epoch):
        self.epoch = epoch

    def epoch_start(self, epoch, epochs, steps, phase):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("mode, weights", [("binary", "separate"), ("reinforce", "separate"), ("binary", "shared")])
def test_resume_after_a_stop_continues_at_the_next_epoch(measured, tmp_path, mode, weights):
    _, pred = measured

    def cfg(out):
        return SearchConfig(space=SPACE, data="digits", out=str(out), epochs=3, warmup_epochs=1, batch_size=64,
                            arch_every=2, arch_lr=0.05, limit=600, mode=mode, weights=weights)

    whole = run_search(cfg(tmp_path / "a"), pred)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(tmp_path / "b"), pred, progress=_StopAt(2))
    assert [r["epoch"] for r in json.loads((tmp_path / "b" / "log.json").read_text())] == [0, 1]
    with pytest.raises(SearchError, match="--resume"):
        run_search(cfg(tmp_path / "b"), pred)
    res = run_search(cfg(tmp_path / "b"), pred, resume=True)
    assert res.resumed_from == 2 and [r["epoch"] for r in res.log] == [0, 1, 2]
    assert res.arch.meta["probabilities"] == whole.arch.meta["probabilities"]  # same streams: same result
    assert res.log[-1]["train_loss"] == whole.log[-1]["train_loss"]
    changed = SearchConfig(**{**cfg(tmp_path / "b").__dict__, "lam": 1.0})
    with pytest.raises(SearchError, match="lam"):
        run_search(changed, pred, resume=True)


# ---- data -----------------------------------------------------------------------------------------

def _write_folder(root, classes, per_class=6, size=(20, 14)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_loads_and_augments(tmp_path):
    from search.data import load_data

    _write_folder(tmp_path / "imgs", ["cat", "dog", "fox"], per_class=10)
    d = load_data(str(tmp_path / "imgs"), 32, 3, seed=0)
    assert d.num_classes == 3 and d.classes == ["cat", "dog", "fox"]
    assert len(d.train) + len(d.valid) + len(d.test) == 30
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 3
    assert d.test[0][0].shape == (3, 32, 32)
    big = load_data(str(tmp_path / "imgs"), 96, 1, seed=0)  # random resized crop, grey
    assert big.train[1][0].shape == (1, 96, 96)


def test_bad_inputs_give_one_line_and_exit_2(measured, tmp_path, capsys):
    db, pred = measured
    base = ["search", "--space", SPACE, "--db", db, "--backend", "torch", "--epochs", "1", "--export", ""]
    fastest = LatencyTable.build(load_space(SPACE), pred).min_ms()
    cases = {
        "below the fastest": base + ["--data", "digits", "--target-ms", f"{fastest / 2:.6f}", "--out", str(tmp_path / "t")],
        "no images": base + ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "e")],
        "only one class": base + ["--data", str(tmp_path / "one"), "--out", str(tmp_path / "o")],
        "has no latency": ["search", "--space", "tiny-mnist", "--db", db, "--backend", "torch", "--data", "digits",
                           "--out", str(tmp_path / "m")],
        "above 1 ms": base + ["--data", "digits", "--loss", "mul", "--target-ms", "0.9", "--out", str(tmp_path / "u")],
    }
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    _write_folder(tmp_path / "one", ["only"], per_class=3)
    for want, argv in cases.items():
        assert main(argv) == 2, want
        err = capsys.readouterr().err.strip()
        assert want in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / argv[argv.index("--out") + 1].rsplit("/", 1)[-1] / "checkpoint.pt").exists()


def test_search_on_an_image_folder(measured, tmp_path):
    _, pred = measured
    _write_folder(tmp_path / "imgs", ["a", "b"], per_class=24)
    res = run_search(SearchConfig(space=SPACE, data=str(tmp_path / "imgs"), out=str(tmp_path / "run"), epochs=1,
                                  batch_size=8, arch_every=1), pred)
    assert res.log[0]["arch_steps"] > 0 and (tmp_path / "run" / "arch.json").exists()


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from search.latency import StoredMedians
from search.train import SearchConfig, run_search
import search.train as T
seen = {}
derive = T.Supernet.derive
def keep(self, *a, **k):
    seen["net"] = self
    return derive(self, *a, **k)
T.Supernet.derive = keep
pred = StoredMedians.from_store(sys.argv[1], "torch")
run_search(SearchConfig(space="tiny", data="digits", out=sys.argv[2], epochs=1, batch_size=32, arch_every=2,
                        arch_lr=0.05, limit=400), pred)
vec = torch.cat([p.detach().flatten() for p in seen["net"].parameters()])
every = [torch.zeros_like(vec) for _ in range(dist.get_world_size())]
dist.all_gather(every, vec)
if dist.get_rank() == 0:
    print("IDENTICAL" if all(torch.equal(every[0], v) for v in every) else "DIFFERENT")
dist.destroy_process_group()
"""


def test_data_parallel_under_torchrun_keeps_ranks_identical(measured, tmp_path):
    """Two gloo ranks on the CPU: same sampled paths, averaged gradients, identical parameters after."""
    import subprocess
    import sys

    db, _ = measured
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), db, str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "IDENTICAL" in p.stdout
    assert ArchSpec.from_json((tmp_path / "out" / "arch.json").read_text()).meta["choices"]


def test_inherited_accuracy_of_subnetworks_after_a_shared_search(measured, tmp_path):
    from search.train import inherited_accuracy

    _, pred = measured
    cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), epochs=3, warmup_epochs=2, batch_size=32,
                       arch_every=2, arch_lr=0.05, limit=900, weights="shared")
    res = run_search(cfg, pred)
    assert 0 < res.arch.meta["train_acc_after_warmup"] <= 1
    assert res.arch.meta["train_acc_after_warmup"] == res.log[1]["train_acc"]  # the last warm-up epoch's
    space = load_space(SPACE)
    choices = [res.arch.meta["choices"], [0] * len(space.searchable)]
    accs = inherited_accuracy(tmp_path / "s", choices)
    assert len(accs) == 2 and all(0.15 < a <= 1 for a in accs)  # 10 classes: above chance after 3 epochs
    assert inherited_accuracy(tmp_path / "s", choices) == accs  # deterministic, supernet left as it was
    with pytest.raises(SearchError, match="no search checkpoint"):
        inherited_accuracy(tmp_path / "nothing", choices)


def test_training_scores_the_test_split_once_after_the_last_epoch(tmp_path):
    from search.train import train_arch

    space = load_space(SPACE)
    r = train_arch(space.arch(space.uniform_choices("k3e3")), "digits", tmp_path, epochs=2, batch_size=32, limit=300)
    assert [row["test_acc"] is None for row in r["log"]] == [True, False]
    assert r["test_acc"] == r["log"][-1]["test_acc"] and 0 <= r["test_acc"] <= 1
