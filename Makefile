# The two commands of the README: `make demo` (the main job) and `make test`.
.PHONY: demo test setup bench clean

setup:
	@./scripts/setup.sh

# The main job on the embedded default: this CPU, ExecuTorch, the SQLite store data/hwnas.db;
# a network of tiny-mnist-w (kernel, expand, skip per layer and a width per stage) specialised for
# this CPU on Fashion-MNIST (5,000 training images, the official 10,000 test images), measured on
# it against the hand-designed family (k3e3, k3e6 and k3e6 at half width), with runs/host/report.html.
demo: setup
	.venv/bin/hwnas run --device local --backend executorch --space tiny-mnist-w --baseline k3e3,k3e6,k3e6@0.5 --target-speedup 1.6 --data fashion-mnist --limit 5000 --train-epochs 3 --out runs/host

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/profile_host.py

clean:
	rm -rf .venv data/hwnas.db data/hwnas.db-wal data/hwnas.db-shm runs
