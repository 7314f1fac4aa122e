#!/usr/bin/env python3
"""Call a keras_vae model served by TF Serving, over REST (standard library only) or gRPC.

    python scripts/serving_client.py sample --model vae --num 16 --seed 3 --out samples.png
    python scripts/serving_client.py reconstruct --model vae --input images.npy --out recon.png
    python scripts/serving_client.py encode --model vae --input images.npy
    python scripts/serving_client.py decode --model vae --input codes.json --out decoded.png
    python scripts/serving_client.py sample --model vae --grpc localhost:8500 --out s.png

REST needs nothing beyond Python. gRPC needs `pip install keras-vae[grpc]`
(tensorflow-serving-api). `--input` takes .json (nested lists) or, when numpy
is installed, .npy.
"""

import argparse
import json
import struct
import sys
import urllib.error
import urllib.request
import zlib


def predict_rest(url, model, signature, inputs, timeout=30.0):
    """POST /v1/models/<model>:predict in the columnar ("inputs") format; returns the outputs dict."""
    body = json.dumps({"signature_name": signature, "inputs": inputs}).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{model}:predict", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise SystemExit(f"TF Serving refused the request ({error.code}): {detail}") from None
    except urllib.error.URLError as error:
        raise SystemExit(f"Cannot reach TF Serving at {url}: {error.reason}") from None
    outputs = reply["outputs"]
    # A signature with a single output comes back unnamed.
    return outputs if isinstance(outputs, dict) else {"output": outputs}


def predict_grpc(address, model, signature, inputs, timeout=30.0):
    """The same call over gRPC (PredictionService.Predict)."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        dtype = np.int32 if name in ("num_samples", "seed") else np.float32
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, dtype)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))
    reply = stub.Predict(request, timeout)
    return {name: tf.make_ndarray(proto).tolist() for name, proto in reply.outputs.items()}


def read_input(path):
    if path.endswith(".npy"):
        import numpy as np

        return np.load(path).tolist()
    with open(path) as f:
        return json.load(f)


def shape_of(nested):
    shape = []
    while isinstance(nested, list):
        shape.append(len(nested))
        nested = nested[0] if nested else None
    return shape


def write_png(path, images, columns=8, pad=2):
    """Writes images [N][H][W][C] (floats in [0, 1], C = 1 or 3) as one PNG grid, stdlib only."""
    count = len(images)
    height, width, channels = len(images[0]), len(images[0][0]), len(images[0][0][0])
    columns = min(columns, count)
    rows = -(-count // columns)
    grid_h, grid_w = rows * (height + pad) + pad, columns * (width + pad) + pad
    grey = [128] * channels
    pixels = [[list(grey) for _ in range(grid_w)] for _ in range(grid_h)]
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        for r in range(height):
            for c in range(width):
                pixels[top + r][left + c] = [int(max(0.0, min(1.0, v)) * 255 + 0.5) for v in image[r][c]]
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)
    colour_type = 0 if channels == 1 else 2

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", grid_w, grid_h, 8, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("signature", choices=["sample", "encode", "decode", "reconstruct", "score"])
    parser.add_argument("--model", default="vae", help="TF Serving's model name")
    parser.add_argument("--url", default="http://localhost:8501", help="REST endpoint")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead of REST")
    parser.add_argument("--input", help=".json or .npy: images [B, H, W, C] or codes [B, L]")
    parser.add_argument("--num", type=int, default=16, help="samples to draw (sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed (sample)")
    parser.add_argument("--out", help="write x_mean images to this PNG; otherwise print the outputs as JSON")
    args = parser.parse_args(argv)

    if args.signature == "sample":
        inputs = {"num_samples": args.num, "seed": args.seed}
    else:
        if not args.input:
            parser.error(f"{args.signature} needs --input")
        inputs = {"z" if args.signature == "decode" else "x": read_input(args.input)}
    if args.grpc:
        outputs = predict_grpc(args.grpc, args.model, args.signature, inputs)
    else:
        outputs = predict_rest(args.url, args.model, args.signature, inputs)
    if args.out:
        if "x_mean" not in outputs:
            raise SystemExit(f"{args.signature} returns no images; leave out --out")
        write_png(args.out, outputs["x_mean"])
        print(f"wrote {len(outputs['x_mean'])} images to {args.out}")
    else:
        json.dump({k: {"shape": shape_of(v), "value": v} for k, v in outputs.items()}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
