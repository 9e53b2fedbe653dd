"""The one interface every inference backend implements, and helpers they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from peftdml_ros.core import model_io
from peftdml_ros.core.errors import InputDataError, ModelArtifactError

Arrays = dict[str, npt.NDArray[np.float32]]


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs the detector graph: model_io inputs in, model_io outputs out (numpy float32, host).

    `name` is "torch", "onnxruntime" or "tensorrt"; `device` is where it runs ("cpu", "cuda",
    "cuda:0"). `selection_reason` says why `create_backend` picked it ("" when built directly).
    `run` is called from one thread at a time.
    """

    selection_reason: str

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str: ...

    def run(self, inputs: Mapping[str, npt.NDArray[np.float32]]) -> Arrays: ...


def check_input_names(inputs: Mapping[str, object]) -> None:
    """Raise InputDataError unless `inputs` has exactly model_io.INPUT_NAMES."""
    if set(inputs) != set(model_io.INPUT_NAMES):
        missing = sorted(set(model_io.INPUT_NAMES) - set(inputs))
        extra = sorted(set(inputs) - set(model_io.INPUT_NAMES))
        raise InputDataError(
            f"engine inputs missing {missing}, unexpected {extra}; build them with "
            "peftdml_ros.core.preprocess.Preprocessor"
        )


def check_graph_names(kind: str, inputs: list[str], outputs: list[str]) -> None:
    """Raise ModelArtifactError unless a graph's I/O names are those of model_io."""
    if set(inputs) != set(model_io.INPUT_NAMES) or set(outputs) != set(model_io.OUTPUT_NAMES):
        raise ModelArtifactError(
            f"{kind} has inputs {inputs} and outputs {outputs}; this version needs inputs "
            f"{list(model_io.INPUT_NAMES)} and outputs {list(model_io.OUTPUT_NAMES)}: "
            "re-export the checkpoint with `peftdml export`"
        )
