# The two commands of the README: `make demo` (the main job) and `make test`.
.PHONY: demo test setup bench clean

setup:
	@./scripts/setup.sh

# Profile the tiny-mnist search space on this machine's CPU with ExecuTorch; print the table.
demo: setup
	.venv/bin/hwnas devices
	.venv/bin/hwnas profile --space tiny-mnist --backend executorch --device local --db data/host.db

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/profile_host.py

clean:
	rm -rf .venv data/host.db data/host.db-wal data/host.db-shm
