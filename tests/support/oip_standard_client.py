"""Drive an OIP v2 endpoint with tritonclient, a standard client, in its own process.

tritonclient registers the `inference.*` protobuf symbols from its own
generated code; edgefleet's stubs register the same names, and one process
cannot hold both. Run as:  python oip_standard_client.py TARGET SCENARIO
It prints one JSON object: the results, or the error's status and message.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

MODEL = "smollm2-135m"
QUESTION = b"What is the capital of France?"


def tensor(name: str, shape: list[int], datatype: str, values: list[object]) -> triton.InferInput:
    dtype = {"BYTES": object, "INT32": np.int32, "FP32": np.float32}[datatype]
    data = triton.InferInput(name, shape, datatype)
    data.set_data_from_numpy(np.array(values, dtype=dtype).reshape(shape))
    return data


def metadata(client: triton.InferenceServerClient) -> dict[str, object]:
    model = client.get_model_metadata(MODEL)
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL),
        "server_name": client.get_server_metadata().name,
        "inputs": [[t.name, t.datatype] for t in model.inputs],
        "outputs": [[t.name, t.datatype] for t in model.outputs],
    }


def infer(
    client: triton.InferenceServerClient, model: str, inputs: list[triton.InferInput]
) -> dict:
    result = client.infer(
        model, inputs=inputs, outputs=[triton.InferRequestedOutput("text_output")]
    )
    (answer,) = result.as_numpy("text_output")
    parameters = result.get_response().parameters
    return {
        "text": answer.decode("utf-8"),
        "completion_tokens": parameters["completion_tokens"].int64_param,
        "engine": parameters["engine"].string_param,
    }


def mismatched_shape() -> triton.InferInput:
    data = tensor("text_input", [1], "BYTES", [QUESTION])
    data._input.shape[:] = [3]  # the declared shape disagrees with the data sent
    return data


SCENARIOS = {
    "metadata": lambda c: metadata(c),
    "infer": lambda c: infer(
        c,
        MODEL,
        [
            tensor("text_input", [1], "BYTES", [QUESTION]),
            tensor("max_tokens", [1], "INT32", [32]),
            tensor("temperature", [1], "FP32", [0.0]),
        ],
    ),
    "wrong-datatype": lambda c: infer(c, MODEL, [tensor("text_input", [1], "INT32", [1])]),
    "two-prompts": lambda c: infer(
        c, MODEL, [tensor("text_input", [2], "BYTES", [QUESTION, QUESTION])]
    ),
    "shape-mismatch": lambda c: infer(c, MODEL, [mismatched_shape()]),
    "unknown-input": lambda c: infer(
        c,
        MODEL,
        [tensor("text_input", [1], "BYTES", [QUESTION]), tensor("extra", [1], "BYTES", [b"x"])],
    ),
    "no-text": lambda c: infer(c, MODEL, [tensor("max_tokens", [1], "INT32", [4])]),
    "bad-parameter-type": lambda c: infer(
        c,
        MODEL,
        [tensor("text_input", [1], "BYTES", [QUESTION]), tensor("max_tokens", [1], "FP32", [1.5])],
    ),
    "unknown-model": lambda c: infer(c, "gpt-17", [tensor("text_input", [1], "BYTES", [QUESTION])]),
}


def main() -> None:
    target, scenario = sys.argv[1], sys.argv[2]
    client = triton.InferenceServerClient(url=target)
    try:
        print(json.dumps({"ok": SCENARIOS[scenario](client)}))
    except InferenceServerException as error:
        print(json.dumps({"status": error.status(), "message": error.message()}))


if __name__ == "__main__":
    main()
