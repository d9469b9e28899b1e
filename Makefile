.PHONY: run wait setup test bench cluster lint screenshots

run:        ## set up (skipped when nothing changed) and start the service on the embedded default (SQLite, files, local-typeset)
	scripts/start.sh

wait:       ## block until the service that `make run` starts answers /readyz (waits for its first install too)
	@scripts/wait.sh

setup:      ## create .venv and install apiinone (skipped when pyproject.toml did not change)
	scripts/setup.sh

test:       ## set up and run every check (ruff, mypy --strict, unit/integration/e2e tests)
	scripts/test.sh

bench:      ## benchmarks side by side with the fake upstream (see README, Performance)
	scripts/bench.sh

cluster:    ## a local PostgreSQL-backed cluster: serve --workers 2 --no-worker + worker nodes node41-43 (README, Scale out)
	scripts/cluster.sh

lint:
	.venv/bin/ruff check src tests bench && .venv/bin/mypy src

screenshots: ## regenerate the README's screenshots in docs/images/ (headless Debian chromium)
	scripts/screenshots.sh
