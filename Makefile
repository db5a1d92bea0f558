# Disparo: `make run` serves the whole product, `make test` runs the test suite.
# Both work on a fresh machine with only Python 3.11+ and make: they create .venv,
# install the pinned dependencies and, unless DATABASE_URL is set, start the
# embedded PostgreSQL under instance/ (stop it with `make stop-db`).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
APP_BASE_URL ?= http://127.0.0.1:$(PORT)
# The mock WhatsApp's own process (the Procfile's development-only `mock`), for `make run`
# only: the tests serve the mock on their own ports.
MOCK_WHATSAPP_PORT ?= $(shell expr $(PORT) + 1)
MOCK_WHATSAPP_URL ?= http://127.0.0.1:$(MOCK_WHATSAPP_PORT)/v23.0
export PATH := $(CURDIR)/$(BIN):$(PATH)
export APP_BASE_URL

.PHONY: run test install env db stop-db lint clean messages requirements

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The git-ignored .env makes every `flask`, worker and test process of this
# checkout a development process (embedded database, mocks on).
env:
	@test -f .env || cp .env.example .env
	@grep -q '^DISPARO_ENV=' .env || echo 'DISPARO_ENV=development' >> .env

db: install env
	@if [ -z "$$DATABASE_URL" ]; then $(BIN)/python -m campaigns.devdb start >/dev/null && echo "embedded PostgreSQL running (instance/pgdata)"; else echo "using DATABASE_URL"; fi

run: db
	$(BIN)/flask --app app db upgrade
	@$(BIN)/flask --app app seed-demo
	@echo "Disparo: http://127.0.0.1:$(PORT)/  (Ctrl-C stops web, workers and mock; make stop-db stops the database)"
	MOCK_WHATSAPP_URL=$(MOCK_WHATSAPP_URL) $(BIN)/honcho start --port $(PORT) web worker ops mock

test: db
	$(BIN)/pytest $(PYTEST_ARGS)

stop-db: install
	@$(BIN)/python -m campaigns.devdb stop

# Style (ruff) and types (mypy, configured in pyproject.toml); CI runs it before the tests.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The deploy's manifest (a Heroku-style Python buildpack installs requirements.txt only):
# pyproject.toml's production dependencies, no extras, at constraints.txt's versions, with
# the hash of every file PyPI has for each, so any platform's wheel installs with
# --require-hashes. Run it after changing a production pin; tests/test_requirements.py
# fails while requirements.txt is out of step.
requirements: install
	CUSTOM_COMPILE_COMMAND="make requirements" $(BIN)/pip-compile --quiet --generate-hashes \
		--no-reuse-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		-c constraints.txt -o requirements.txt pyproject.toml

# After changing UI text: extract every marked string into translations/messages.pot,
# merge it into each language's .po (translate what is new or fuzzy there), and compile
# the .mo files Flask-Babel reads. Commit all three; tests/test_i18n.py fails while a
# msgid has no translation or a .mo is older than its .po.
messages: install
	$(BIN)/pybabel extract -F babel.cfg -k _l -k N_ -k _lp:1c,2 --no-location --sort-output \
		--project Disparo --copyright-holder "Disparo contributors" -o translations/messages.pot .
	$(BIN)/pybabel update -i translations/messages.pot -d translations --no-fuzzy-matching --ignore-obsolete
	$(BIN)/pybabel compile -d translations --statistics

clean: stop-db
	rm -rf $(VENV) instance .env
