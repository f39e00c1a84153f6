#!/usr/bin/env bash
# The main job on a fresh machine: set up ./.venv, then run the semi-supervised workflow on the synthetic demo
# dataset (plan, preprocess, preprocess unlabeled, train, predict, score). Extra arguments go to nnunet_ssl_demo.
source "$(dirname "$0")/venv.sh"
exec .venv/bin/nnunet_ssl_demo --work demo_work "$@"
