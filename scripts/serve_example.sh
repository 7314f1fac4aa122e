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
REST_PORT=${REST_PORT:-8501}

if [ "${SKIP_DOCKER:-0}" != 1 ]; then
  docker run -d --rm --name "keras-vae-$NAME" \
    -p "$REST_PORT:8501" -p 8500:8500 \
    --mount "type=bind,source=$MODEL_DIR,target=/models/$NAME" \
    -e MODEL_NAME="$NAME" \
    tensorflow/serving
  # Wait until the model reports AVAILABLE.
  until curl -sf "http://$HOST:$REST_PORT/v1/models/$NAME" | grep -q AVAILABLE; do sleep 1; done
fi

URL="http://$HOST:$REST_PORT/v1/models/$NAME:predict"
# The image shape and code size of this model, read from its metadata (the SavedModel's SignatureDefs
# as the server reports them), so the requests below fit any exported model.
METADATA=$(curl -sf "http://$HOST:$REST_PORT/v1/models/$NAME/metadata")
read -r X Z <<<"$(python3 -c '
import json, sys
signatures = json.loads(sys.argv[1])["metadata"]["signature_def"]["signature_def"]
def dims(signature, name):
    tensor = signatures.get(signature, {}).get("inputs", {}).get(name)
    return [int(d["size"]) for d in tensor["tensor_shape"]["dim"]] if tensor else None
x, z = dims("reconstruct", "x"), dims("decode", "z")
image = [[[0.0] * x[3]] * x[2]] * x[1]
print(json.dumps([image]).replace(" ", ""), json.dumps([[0.0] * z[1], [1.0] * z[1]] if z else []).replace(" ", ""))
' "$METADATA")"

# sample: num_samples images from the prior; the same seed gives the same images.
curl -s -X POST "$URL" -d '{"signature_name": "sample", "inputs": {"num_samples": 2, "seed": 42}}' | head -c 300; echo

# decode: codes -> decoder means (one row of the model's code size per image).
if [ "$Z" != "[]" ]; then
  curl -s -X POST "$URL" -d "{\"signature_name\": \"decode\", \"inputs\": {\"z\": $Z}}" | head -c 300; echo
fi

# encode / reconstruct / score: images [batch, H, W, C] in [0, 1], of this model's shape.
curl -s -X POST "$URL" -d "{\"signature_name\": \"encode\", \"instances\": [{\"x\": ${X:1:-1}}]}" | head -c 300; echo
curl -s -X POST "$URL" -d "{\"signature_name\": \"reconstruct\", \"inputs\": {\"x\": $X}}" | head -c 300; echo
curl -s -X POST "$URL" -d "{\"signature_name\": \"score\", \"inputs\": {\"x\": $X}}"; echo
# serving_default is reconstruct; it is what a request without signature_name gets.
curl -s -X POST "$URL" -d "{\"inputs\": {\"x\": $X}}" | head -c 300; echo
