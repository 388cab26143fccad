# Sourced by the scripts: repo root, the runtime venv, and where ONNX Runtime's library is.
VIDMESH_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
export VIDMESH_ROOT
VENV=$VIDMESH_ROOT/.venv
if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
  ORT_DYLIB_PATH=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort | tail -n1 || true)
  export ORT_DYLIB_PATH
fi
