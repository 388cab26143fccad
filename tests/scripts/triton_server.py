"""Serves an ONNX model through a real Triton Inference Server (PyPI nvidia-pytriton), for
tests/triton_backend.rs: the model runs in ONNX Runtime inside a Python function that Triton's
Python backend calls, and clients reach it over Triton's KServe-v2 gRPC endpoint.

Prints `READY <grpc port>` on stdout once the model answers ModelReady, then serves until
killed. Run with the Python of .venv-triton (scripts/setup-triton makes it).
"""

import argparse
import os
import signal
import sys
import sysconfig
import time

# The Python backend's stub process links libpython3.X.so.1.0 and then imports this
# interpreter's standard library; when the interpreter is not the system one (pyenv, for
# example) the system's libpython would be found first and the two disagree. Point the loader
# at this interpreter's own library before Triton starts its children.
_libdir = sysconfig.get_config_var("LIBDIR")
if _libdir:
    os.environ["LD_LIBRARY_PATH"] = _libdir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="ONNX file to serve")
    ap.add_argument("--name", required=True, help="model name on the server")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--fp16-name", help="also serve the model under this name, its outputs as FP16")
    ap.add_argument("--tls-dir", help="serve gRPC over TLS with DIR/server.pem, DIR/server-key.pem, DIR/ca.pem")
    ap.add_argument("--mutual", action="store_true", help="with --tls-dir: require a client certificate signed by ca.pem")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--workspace", required=True, help="a directory for Triton's model store; must not exist")
    args = ap.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    model_outputs = session.get_outputs()

    def infer_as(dtype):
        @batch
        def infer(**inputs):
            x = inputs[model_input.name].astype(np.float32, copy=False)
            values = session.run(None, {model_input.name: x})
            return {o.name: v.astype(dtype, copy=False) for o, v in zip(model_outputs, values)}

        return infer

    def per_image(shape):
        # Triton declares shapes without the batch dimension when max_batch_size > 0.
        return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])

    tls = {}
    if args.tls_dir:
        tls = dict(
            grpc_use_ssl=True,
            grpc_use_ssl_mutual=args.mutual,
            grpc_server_cert=os.path.join(args.tls_dir, "server.pem"),
            grpc_server_key=os.path.join(args.tls_dir, "server-key.pem"),
            grpc_root_cert=os.path.join(args.tls_dir, "ca.pem"),
        )
    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
        **tls,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        served = [(args.name, np.float32)]
        if args.fp16_name:
            served.append((args.fp16_name, np.float16))
        for name, dtype in served:
            triton.bind(
                model_name=name,
                infer_func=infer_as(dtype),
                inputs=[Tensor(name=model_input.name, dtype=np.float32, shape=per_image(model_input.shape))],
                outputs=[Tensor(name=o.name, dtype=dtype, shape=per_image(o.shape)) for o in model_outputs],
                config=ModelConfig(max_batch_size=args.max_batch),
                strict=True,
            )
        triton.run()
        # Readiness over HTTP: it is plain even when gRPC is TLS.
        client = httpclient.InferenceServerClient(f"127.0.0.1:{args.http_port}")
        deadline = time.monotonic() + 120
        for name, _ in served:
            while not client.is_model_ready(name):
                if time.monotonic() > deadline:
                    print(f"model {name} not ready after 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        print(f"READY {args.grpc_port}", flush=True)
        # Serve until the test kills the process group (SIGKILL) or stops it (SIGTERM).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
