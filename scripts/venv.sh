# Sourced by demo.sh and test.sh: creates ./.venv on first use and installs nnunet-ssl (editable) with its test
# dependencies. pip takes torch and torchvision together from the registry, which keeps them matching.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
