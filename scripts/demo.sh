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

# Demo accounts: an admin and an investigator, passwords kept in the data dir (0600).
CRED=$DATA/demo-credentials
if [ ! -f "$CRED" ]; then
  mkdir -p "$DATA"
  umask 077
  printf 'admin %s\ninvestigator %s\n' "$(head -c 12 /dev/urandom | base64 | tr -d '/+=')" \
    "$(head -c 12 /dev/urandom | base64 | tr -d '/+=')" > "$CRED"
fi
ADMIN_PW=$(awk '$1=="admin"{print $2}' "$CRED")
INV_PW=$(awk '$1=="investigator"{print $2}' "$CRED")
if [ ! -f "$DATA/gallery.db" ] || ! FACELEDGER_PASSWORD=$ADMIN_PW $FL stats --as admin >/dev/null 2>&1; then
  FACELEDGER_PASSWORD=$ADMIN_PW $FL init --admin admin
  FACELEDGER_PASSWORD=$ADMIN_PW FACELEDGER_NEW_PASSWORD=$INV_PW \
    $FL users add investigator --roles investigator --as admin
fi

echo "== ingest ${#GALLERY[@]} paths into $DATA"
FACELEDGER_PASSWORD=$ADMIN_PW $FL ingest "${GALLERY[@]}" --source demo --legal-basis "$BASIS" --as admin
echo
echo "== search $PROBE (as investigator, case DEMO-1)"
FACELEDGER_PASSWORD=$INV_PW $FL search "$PROBE" --top-k 5 --as investigator \
  --case DEMO-1 --purpose missing-person --justification "demo search on a public benchmark"
echo
FACELEDGER_PASSWORD=$ADMIN_PW $FL stats --as admin
echo
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
echo "demo accounts, for this demo only (also in $(realpath "$CRED"), mode 0600;"
echo "a real deployment creates its own users and deletes this file):"
echo "  admin         $ADMIN_PW"
echo "  investigator  $INV_PW"
if [ "${DEMO_SERVE:-1}" = 1 ]; then
  echo
  echo "== serving the web UI and API at http://$HOST:$PORT/  (Ctrl-C to stop)"
  exec $FL serve --host "$HOST" --port "$PORT"
fi
