#!/usr/bin/env bash
# The main job on the embedded default: ingest a gallery, then search it with a probe photo.
#   PHOTOS=/path/to/photos make demo   ingests your own folder (with LEGAL_BASIS set)
#   otherwise a demo-sized subset of LFW from ../shared/data/lfw, else LFW fetched from
#   its official site by `faceledger datasets fetch lfw`.
set -euo pipefail
cd "$(dirname "$0")/.."
FL=.venv/bin/faceledger
DATA=${FACELEDGER_DATA:-faceledger-data}
export FACELEDGER_DATA=$DATA
LFW=${LFW:-$(realpath -m ../shared/data/lfw)}
PEOPLE=${DEMO_PEOPLE:-300}

if [ -n "${PHOTOS:-}" ]; then
  GALLERY=("$PHOTOS")
  BASIS=${LEGAL_BASIS:?set LEGAL_BASIS: why you may hold the photos in PHOTOS}
  PROBE=${PROBE:?set PROBE to a photo to search with}
else
  if [ ! -f "$LFW/pairs.txt" ]; then
    LFW=$DATA/datasets/lfw
    [ -f "$LFW/pairs.txt" ] || $FL datasets fetch lfw --dest "$LFW"
  fi
  # Demo gallery: every photo of the first $PEOPLE people (in name order) who have 2 to 20
  # photos, plus Colin Powell's first photo; the probe is another photo of him.
  GALLERY=("$LFW/Colin_Powell/Colin_Powell_0001.jpg")
  n=0
  while IFS=$'\t' read -r name count; do
    { [ "$count" -ge 2 ] && [ "$count" -le 20 ]; } || continue
    GALLERY+=("$LFW/$name")
    n=$((n + 1)); [ "$n" -ge "$PEOPLE" ] && break
  done < "$LFW/lfw-names.txt"
  BASIS="research: LFW public benchmark (demo)"
  PROBE=${PROBE:-$LFW/Colin_Powell/Colin_Powell_0002.jpg}
fi

echo "== ingest ${#GALLERY[@]} paths into $DATA"
$FL ingest "${GALLERY[@]}" --source demo --legal-basis "$BASIS"
echo
echo "== search $PROBE"
$FL search "$PROBE" --top-k 5
echo
$FL stats
