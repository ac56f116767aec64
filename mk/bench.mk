# Benchmarks: taskq side by side with pgqueuer and procrastinate on the local PostgreSQL
# (127.0.0.1:5432, user root). `make bench BENCH_ARGS="--scale-rows 1000000"` passes flags;
# `.venv/bin/python -m bench --help` lists them.
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: bench-deps bench-quick bench-profile bench-docs

$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	touch $@

# Debian tools, installed only when missing: wrk (HTTP load) and pgbench (which Debian
# ships with the server package that postgresql-contrib pulls in).
bench-deps: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && $(APT_INSTALL) wrk; }
	@command -v pgbench >/dev/null || { apt-get update -qq && $(APT_INSTALL) postgresql-contrib; }

bench: bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

# Tiny sizes, one round: checks that the harness runs end to end (about 30 s).
bench-quick: bench-deps
	$(BIN)/python -m bench --quick --name quick $(BENCH_ARGS)

# py-spy and EXPLAIN views of where taskq spends its time; see bench/PROFILE-NOTES.md.
bench-profile: bench-deps
	$(BIN)/python -m bench.profile

# Copy the latest run's tables and chart into docs/benchmarks.md.
bench-docs:
	$(BIN)/python -m bench.docs
