#!/bin/sh
# PocketFlow's run_seven.sh submitted a job to Tencent's internal cluster. This project has no
# cluster launcher: it says so in one line, with the command to run instead (docs/migrating.md).
echo "error: run_seven.sh (PocketFlow's launcher for Tencent's internal cluster) has no counterpart here: run scripts/run_local.sh $* on each machine, from your own job script (-n=N processes per machine; docs/migrating.md, Scripts)" >&2
exit 2
