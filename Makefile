.PHONY: run test bench cluster lint

run:        ## set up and start the service on the embedded default (SQLite, files, local-typeset)
	scripts/start.sh

test:       ## set up and run every check (ruff, mypy --strict, unit/integration/e2e tests)
	scripts/test.sh

bench:      ## benchmarks side by side with the fake upstream (see README, Performance)
	scripts/bench.sh

lint:
	.venv/bin/ruff check src tests bench && .venv/bin/mypy src
