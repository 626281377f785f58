#!/bin/sh
# The compose `init` job: `kilotune <its command>` plus the optional flags whose variables are
# set. Compose cannot drop an empty argument from a command list, so "--subset ''" would
# otherwise reach the CLI; this script is the one place that decides.
#   KILOTUNE_SUBSET   subset file, as the containers see it (e.g. /cache/my-subset.json)
#   KILOTUNE_SPACE    --space file (YAML or JSON), as the containers see it
#   KILOTUNE_TIMEOUT  global time budget in seconds
set -eu
if [ -n "${KILOTUNE_SUBSET:-}" ]; then set -- "$@" --subset "$KILOTUNE_SUBSET"; fi
if [ -n "${KILOTUNE_SPACE:-}" ]; then set -- "$@" --space "$KILOTUNE_SPACE"; fi
if [ -n "${KILOTUNE_TIMEOUT:-}" ]; then set -- "$@" --timeout "$KILOTUNE_TIMEOUT"; fi
exec kilotune "$@"
