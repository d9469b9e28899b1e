.PHONY: run test bench cluster lint

run:        ## set up and start the service on the embedded default (SQLite, files, local-typeset)
	scripts/start.sh

test:       ## set up and run every check (ruff, mypy --strict, unit/integration/e2e tests)
	scripts/test.sh

bench:      ## benchmarks side by side with the fake upstream (see README, Performance)
	scripts/bench.sh

cluster:    ## a local PostgreSQL-backed cluster: serve --workers 2 --no-worker + worker nodes node41-43 (README, Scale out)
	scripts/cluster.sh

lint:
	.venv/bin/ruff check src tests bench && .venv/bin/mypy src
