# The two commands of the README: `make demo` (the main job) and `make test`.
.PHONY: demo test setup bench clean

setup:
	@./scripts/setup.sh

# The main job on the embedded default: this CPU, ExecuTorch, the SQLite store data/hwnas.db;
# a network specialised for this CPU on Fashion-MNIST (5,000 training images, the official 10,000
# test images), measured on it, with runs/host/report.html.
demo: setup
	.venv/bin/hwnas run --device local --backend executorch --target-speedup 1.6 --data fashion-mnist --limit 5000 --train-epochs 3 --out runs/host

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/profile_host.py

clean:
	rm -rf .venv data/hwnas.db data/hwnas.db-wal data/hwnas.db-shm runs
