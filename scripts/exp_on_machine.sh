#!/usr/bin/env bash
# One experiment on this machine, in a clone of its own: `dvc exp run` against the shared DVC
# remote, then `dvc exp push`, so that the main clone's `dvc exp pull origin` and `dvc exp show`
# list the experiments every machine ran (docs/gpus.md, Many machines).
#
#   scripts/exp_on_machine.sh <git-url> <clone-dir> <name> [dvc exp run options: -S key=value ...]
#
# The DVC remote is the one .dvc/config names (`dvc remote add -d`, committed). Stages that dvc.lock
# (committed, with their outputs pushed) says are up to date do not run: run download, split and
# pack once in the main clone first. The run cache, each stage's results filed under its code,
# params and data, goes through the remote both ways: a stage that another machine already ran
# with the same inputs is restored from it instead of run, where all its outputs are DVC-cached
# (DVC does not restore a stage with a `cache: false` output on another machine: split's metrics).
# EXP_REV: the commit to run (default: the default branch of <git-url>).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 <git-url> <clone-dir> <name> [dvc exp run options]" >&2
  exit 2
fi
url=$1 dir=$2 name=$3 rev=${EXP_REV:-origin/HEAD}
shift 3
# A value that starts with '-' would reach git or dvc as an option (git clone --upload-pack=<command>
# runs that command): `--` ends git's options before the URL and folder; a revision or experiment
# name cannot follow a `--` there, so one that starts with '-' is refused.
for value in "$rev" "$name"; do
  case $value in
    -*) echo "$0: error: '$value' starts with '-': not a revision or experiment name" >&2; exit 2 ;;
  esac
done
if [ ! -d "$dir/.git" ]; then
  git clone -q -- "$url" "$dir"
fi
cd -- "$dir"
git fetch -q origin
git checkout -q --detach "$rev" --
dvc fetch --run-cache -q                     # the run cache's entries, and the outputs dvc.lock names
dvc exp run --pull -n "$name" "$@"           # --pull: the outputs of stages restored from the run cache
dvc exp push --run-cache origin "$name"      # the experiment (git ref), its outputs and the run cache
