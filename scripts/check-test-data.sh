#!/usr/bin/env bash
# The test data CI needs, checked before anything is installed: LFW at $FACELEDGER_LFW, or at
# ../shared/data/lfw next to the checkout. Without it more than half of the suite cannot run,
# and under CI=true those tests fail anyway, after the installs; this says so in a second.
set -euo pipefail
cd "$(dirname "$0")/.."

lfw=${FACELEDGER_LFW:-$(cd .. && pwd)/shared/data/lfw}
if [ ! -f "$lfw/pairs.txt" ]; then
  echo "check-test-data: LFW not found at $lfw (no pairs.txt)." >&2
  echo "  The tests need the LFW photos: put them at ../shared/data/lfw or set FACELEDGER_LFW." >&2
  exit 3
fi
people=$(find "$lfw" -mindepth 1 -maxdepth 1 -type d | wc -l)
if [ "$people" -lt 100 ]; then
  echo "check-test-data: LFW at $lfw has $people people folders, expected thousands." >&2
  exit 3
fi
echo "check-test-data: LFW at $lfw"
