#!/usr/bin/env bash
# The test suite on a fresh machine: set up ./.venv, then run pytest. Extra arguments go to pytest.
source "$(dirname "$0")/venv.sh"
# Two workers, one test file each at a time: the end-to-end tests spend much of their time in single-threaded
# start-up, so two run side by side on two cores.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 "$@"
