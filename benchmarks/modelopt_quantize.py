"""Run NVIDIA ModelOpt's ONNX post-training quantizer on one fp32 graph (called by benchmarks/int8_modelopt.py).

Runs in ModelOpt's own venv (installing `nvidia-modelopt[onnx]` downgrades onnx and adds
onnxruntime-gpu, which breaks the project's ORT quantization API), so this file imports nothing from
natsdeploy:

    /work/venvs/modelopt/bin/python benchmarks/modelopt_quantize.py FP32.onnx CALIB.npy OUT.onnx

int8, max calibration, on the CPU execution provider, float tensors kept fp32 (`high_precision_dtype`),
ModelOpt's default passes (`concat_elimination`). Prints one JSON line: {"ok": true, "seconds": ...} or
{"ok": false, "error": "<exact error>"}.
"""

import json
import sys
import time
import traceback

import numpy as np


def main() -> None:
    fp32, calib, out = sys.argv[1:4]
    t0 = time.perf_counter()
    try:
        import modelopt
        from modelopt.onnx.quantization import quantize

        quantize(onnx_path=fp32, quantize_mode="int8", calibration_data=np.load(calib), calibration_method="max",
                 calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=out, log_level="ERROR")
        print(json.dumps({"ok": True, "seconds": round(time.perf_counter() - t0, 2), "modelopt": modelopt.__version__}))
    except Exception as e:  # recorded as ModelOpt's exact error, never hidden
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}",
                          "where": traceback.format_exc().strip().splitlines()[-3:]}))


if __name__ == "__main__":
    main()
