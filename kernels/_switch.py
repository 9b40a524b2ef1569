"""An on/off setting of the kernels: an environment variable (1 or 0; unset, the switch's
default) that a ``with switch.override(enabled):`` block overrides for the code inside it
(the innermost block wins): ``CARVELAB_CUDA_GRAPHS`` (``cuda_graph``), ``CARVELAB_FUSED_CONTENT``
(``triton_ops``), ``CARVELAB_FUSED_CONV``, ``CARVELAB_FUSED_NORM``, ``CARVELAB_JOINT_PROJ``,
``CARVELAB_FUSED_GATES``, ``CARVELAB_FUSED_CE`` and ``CARVELAB_CAST_ONCE`` (``fused``), all on by
default."""
from __future__ import annotations

import contextlib
import os


class Switch:
    def __init__(self, env: str, on: str, off: str, default: str = "1"):
        self.env, self.on, self.off = env, on, off  # on / off: what 1 and 0 do, for the error
        self.default = default
        self._overrides: list[bool] = []

    @contextlib.contextmanager
    def override(self, enabled: bool):
        self._overrides.append(bool(enabled))
        try:
            yield
        finally:
            self._overrides.pop()

    def enabled(self) -> bool:
        if self._overrides:
            return self._overrides[-1]
        value = os.environ.get(self.env, self.default)
        if value not in ("0", "1"):
            raise ValueError(f"{self.env}={value!r} is not allowed; use 1 ({self.on}) or 0 ({self.off})")
        return value == "1"
