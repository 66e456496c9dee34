# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    install into .venv, then ingest, train, score, deploy, diagnose and report on the shipped data
#   make test   install into .venv (with test tools), then run the tests
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config.json

.DEFAULT_GOAL := help
.PHONY: help run test test-fast test-soak ingest train score deploy rollback diagnostics report serve apicalls fullprocess history cronjob database practice udacity baseline bench bench-api bench-api-memory bench-price bench-health bench-fullprocess bench-cycle bench-families bench-estimate bench-drift-tools bench-database bench-ingest-memory bench-clients classic-clients data lint typecheck metrics clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed ## ingest, train, score, deploy, then diagnostics and the report, with $(CONFIG)
	$(PY) ingestion.py --config $(CONFIG)
	$(PY) training.py --config $(CONFIG)
	$(PY) scoring.py --config $(CONFIG)
	$(PY) deployment.py --config $(CONFIG)
	$(PY) diagnostics.py --config $(CONFIG)
	$(PY) reporting.py --config $(CONFIG)

# Tests run on PYTEST_WORKERS processes (pytest-xdist; 0: in pytest's own), each taking the next test when it is free:
# the slow tests mostly wait on the processes they start. PYTEST_ARGS: more pytest options. The hundreds of processes
# the tests start reuse the project's compiled modules (__pycache__, ignored by git) even where the environment turns
# writing them off (PYTHONDONTWRITEBYTECODE).
PYTEST_WORKERS ?= 2
PYTEST_RUN = PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n $(PYTEST_WORKERS) $(if $(filter-out 0,$(PYTEST_WORKERS)),--dist worksteal)

test: $(VENV)/.installed ## run every test, 2 at a time (PYTEST_ARGS: more pytest options; PYTEST_WORKERS=0: one at a time)
	$(PYTEST_RUN) $(PYTEST_ARGS)
test-fast: $(VENV)/.installed ## the in-process tests only (-m "not slow"): under a minute
	$(PYTEST_RUN) -m "not slow" $(PYTEST_ARGS)
test-soak: $(VENV)/.installed ## the attacks at soak strength: 20 kills during retraining runs, 10,000 fuzzed requests
	RISK_TEST_KILL_CYCLES=20 RISK_TEST_FUZZ_REQUESTS=10000 $(PYTEST_RUN) $(PYTEST_ARGS) \
		tests/test_pipeline_attacks.py::test_random_kills_during_retrain_cycles_lose_double_and_leave_nothing \
		tests/test_api_server_attacks.py::test_a_fuzzer_of_thousands_of_hostile_requests_gets_no_5xx_and_no_200_to_a_body_not_read_whole

ingest: $(VENV)/.installed ## ingestion only
	$(PY) ingestion.py --config $(CONFIG)
train: $(VENV)/.installed ## training only
	$(PY) training.py --config $(CONFIG)
score: $(VENV)/.installed ## scoring only
	$(PY) scoring.py --config $(CONFIG)
deploy: $(VENV)/.installed ## deployment only
	$(PY) deployment.py --config $(CONFIG)
rollback: $(VENV)/.installed ## make the previous deployed version current again
	$(PY) deployment.py --config $(CONFIG) --rollback
diagnostics: $(VENV)/.installed ## predictions, statistics, stage timings and dependency status -> diagnostics.json
	$(PY) diagnostics.py --config $(CONFIG)
report: $(VENV)/.installed ## confusion-matrix plot and PDF report of the deployed model
	$(PY) reporting.py --config $(CONFIG)
serve: $(VENV)/.installed ## serve the API with gunicorn, 2 workers, on 127.0.0.1:8000
	$(PY) app.py --config $(CONFIG)
apicalls: $(VENV)/.installed ## call every endpoint of the running API -> apireturns.txt
	$(PY) apicalls.py --config $(CONFIG)

fullprocess: $(VENV)/.installed ## one monitoring run: new data? drift? retrain, gate, redeploy (what cron runs)
	$(PY) fullprocess.py --config $(CONFIG)
history: $(VENV)/.installed ## print the latest fullprocess.py runs from the run history
	$(PY) fullprocess.py --config $(CONFIG) --history
cronjob: $(VENV)/.installed ## write cronjob.txt for this checkout (install it with: crontab cronjob.txt)
	$(PY) fullprocess.py --config $(CONFIG) --write-cronjob cronjob.txt

clients.sqlite: | $(VENV)/.installed
	$(PY) generate_data.py database --url sqlite:///clients.sqlite --table client_activity
database: clients.sqlite ## load the shipped data into clients.sqlite (once), then the whole pipeline from that table
	$(MAKE) run CONFIG=config.database.json

practice: ## the whole pipeline on practicedata/ (config.practice.json)
	$(MAKE) run CONFIG=config.practice.json
udacity: ## the whole pipeline on ../shared/udacity-data (config.udacity.json)
	$(MAKE) run CONFIG=config.udacity.json

baseline: $(VENV)/.installed ## compare the model with plain LogisticRegression() (after make run)
	$(PY) -m bench.baseline --config $(CONFIG)
bench: $(VENV)/.installed ## benchmark ingestion, training and scoring on 1,000,000 rows
	$(PY) -m bench.bench_pipeline
bench-api: $(VENV)/.installed ## benchmark the API under gunicorn with wrk (apt-get install wrk)
	$(PY) -m bench.bench_api
bench-price: $(VENV)/.installed ## one JSON record: the API's requests/s as a share of a bare Flask app's (OLD=path: earlier code beside)
	$(PY) -m bench.bench_api --price-of-checks $(if $(OLD),--old $(OLD))
bench-health: $(VENV)/.installed ## GET /health beside 50 slow clients, for each documented way of starting the server
	$(PY) -m bench.bench_api --health-per-start
bench-api-memory: $(VENV)/.installed ## one API worker's memory: unread large answers, a 250 MB file refused (OLD=path: earlier code beside)
	$(PY) -m bench.bench_api_memory $(if $(OLD),--old $(OLD))
bench-fullprocess: $(VENV)/.installed ## benchmark fullprocess.py: no-op run, 10,000 new rows on 1,000,000, drift-retrain-deploy
	$(PY) -m bench.bench_fullprocess
bench-cycle: $(VENV)/.installed ## benchmark the whole drift-retrain-deploy-report cycle and make run (OLD=path: earlier code beside)
	$(PY) -m bench.bench_cycle --big $(if $(OLD),--old $(OLD))
bench-estimate: $(VENV)/.installed ## how often the label-free estimate's interval holds the F1 measured later (50 batches a world)
	$(PY) -m bench.bench_estimate
# NannyML runs in a virtual environment of its own, never this one: python3.11 -m venv /work/nannyml-venv, then
# /work/nannyml-venv/bin/pip install nannyml 'pandas<3' statsmodels; without NANNYML_PYTHON its rows are left out.
NANNYML_PYTHON ?=
bench-drift-tools: $(VENV)/.installed ## the drift tests beside NannyML's on 1,000,000 + 200,000 rows (NANNYML_PYTHON=path, OLD=path)
	$(PY) -m bench.bench_drift_tools $(if $(NANNYML_PYTHON),--nannyml-python $(NANNYML_PYTHON)) $(if $(OLD),--old $(OLD))
bench-families: $(VENV)/.installed ## the model families side by side: F1 against the Bayes-optimal, calibration, fit and one-row time
	$(PY) -m bench.bench_families
bench-database: $(VENV)/.installed ## benchmark a database source: 1,000,000 rows from PostgreSQL and SQLite, the no-op check
	$(PY) -m bench.bench_database
bench-ingest-memory: $(VENV)/.installed ## peak memory and time of ingesting one 60 MB, 250 MB and 1 GB CSV file and a 60 MB JSON file
	$(PY) -m bench.bench_ingest_memory $(if $(OLD),--old $(OLD))
bench-clients: $(VENV)/.installed ## the client table with 540,000 current clients: first /clients, memory per worker, CSV (OLD=path: earlier code beside)
	$(PY) -m bench.bench_clients $(if $(OLD),--old $(OLD))
classic-clients: $(VENV)/.installed ## status of each request shape of classic course clients against gunicorn app:app
	$(PY) -m bench.classic_clients
data: $(VENV)/.installed ## regenerate the shipped data (deterministic)
	$(PY) generate_data.py shipped
metrics: $(VENV)/.installed ## count Any-dicts, .get( calls, functions over 50 lines and the largest complexity
	$(PY) -m bench.code_metrics
lint: $(VENV)/.installed ## ruff check and format check; the package's layers import only downward (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
typecheck: $(VENV)/.installed ## mypy: riskwatch's layers below the web and the report strictly; the rest with unannotated functions checked too
	$(VENV)/bin/mypy

clean: ## remove generated artifacts (keeps .venv and the shipped data)
	rm -rf ingesteddata/* models/* practicemodels/* production_deployment/* build .pytest_cache
