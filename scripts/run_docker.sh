#!/bin/sh
# PocketFlow's run_docker.sh ran a job in its Docker image. This project ships no image: it says
# so in one line, with the command to run inside your own container instead (docs/migrating.md).
echo "error: run_docker.sh (PocketFlow's Docker wrapper) has no counterpart here: this project ships no image; inside your own container (pip install torch==2.13.0 and this project) run scripts/run_local.sh $* (docs/migrating.md, Scripts)" >&2
exit 2
