# Reliability suite and dependency audit (included by the main Makefile: -include mk/*.mk).
#   make audit              known vulnerabilities in the runtime dependencies (pip-audit with
#                           PyPI's data); fails when that data cannot be fetched, never passes
#                           on missing data
#   make test-reliability   only the fault-injection, load and hostile-input suite
#                           (tests/reliability; `make test` runs it too)

.PHONY: audit test-reliability

# `make test` (pytest) runs the audit first.
TEST_TOOLS += audit

audit: deps
	$(BIN)/python scripts/audit-deps.py $(AUDIT_ARGS)

test-reliability: deps
	$(BIN)/pytest tests/reliability $(PYTEST_ARGS)
