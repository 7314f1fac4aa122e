#!/usr/bin/env bash
# Serve an exported keras_vae model with TF Serving and call every signature over REST.
#
#   keras-vae fit --export-name vae            # writes saved_models/vae/1
#   scripts/serve_example.sh vae               # starts the server, then runs the requests below
#
# TF Serving polls saved_models/<name>/ and loads the highest numbered version;
# keras-vae writes versions atomically, so a new export is picked up live.
set -euo pipefail
NAME=${1:-vae}
MODEL_DIR=$(cd "$(dirname "$0")/.." && pwd)/saved_models/$NAME
HOST=${HOST:-localhost}

if [ "${SKIP_DOCKER:-0}" != 1 ]; then
  docker run -d --rm --name "keras-vae-$NAME" \
    -p 8501:8501 -p 8500:8500 \
    --mount "type=bind,source=$MODEL_DIR,target=/models/$NAME" \
    -e MODEL_NAME="$NAME" \
    tensorflow/serving
  # Wait until the model reports AVAILABLE.
  until curl -sf "http://$HOST:8501/v1/models/$NAME" | grep -q AVAILABLE; do sleep 1; done
fi

URL="http://$HOST:8501/v1/models/$NAME:predict"
# The image shape and latent size of this model, read from its metadata.
curl -s "http://$HOST:8501/v1/models/$NAME/metadata" | head -c 600; echo

# sample: num_samples images from the prior; the same seed gives the same images.
curl -s -X POST "$URL" -d '{"signature_name": "sample", "inputs": {"num_samples": 2, "seed": 42}}' | head -c 300; echo

# decode: latent codes -> decoder means (latent_dim numbers per row; 16 by default).
Z=$(python3 -c 'print([[0.0] * 16, [1.0] * 16])')
curl -s -X POST "$URL" -d "{\"signature_name\": \"decode\", \"inputs\": {\"z\": $Z}}" | head -c 300; echo

# encode / reconstruct / score: images [batch, H, W, C] in [0, 1] (28x28x1 here).
X=$(python3 -c 'print([[[[0.0]] * 28] * 28])')
curl -s -X POST "$URL" -d "{\"signature_name\": \"encode\", \"instances\": [{\"x\": ${X:1:-1}}]}" | head -c 300; echo
curl -s -X POST "$URL" -d "{\"signature_name\": \"reconstruct\", \"inputs\": {\"x\": $X}}" | head -c 300; echo
curl -s -X POST "$URL" -d "{\"signature_name\": \"score\", \"inputs\": {\"x\": $X}}"; echo
# serving_default is reconstruct; it is what a request without signature_name gets.
curl -s -X POST "$URL" -d "{\"inputs\": {\"x\": $X}}" | head -c 300; echo
