"""The numerics policy: per-call precision, bf16 autocast scoped to the call, TF32 gate."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ganviews.core.errors import ConfigError
from ganviews.core.runtime import _TF32_GATE, NumericsPolicy


def test_policy_validates_and_scopes_autocast_to_the_call() -> None:
    with pytest.raises(ConfigError, match=r"precision='fp8': unknown; allowed: exact, tf32, bf16"):
        NumericsPolicy("fp8")
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    cpu = torch.device("cpu")
    with NumericsPolicy("bf16").networks(cpu):
        assert lin(x).dtype == torch.bfloat16
        with NumericsPolicy("exact").networks(cpu):  # an exact call inside: fp32 again
            assert lin(x).dtype == torch.float32
    assert lin(x).dtype == torch.float32  # nothing leaks past the call
    seen = []
    with NumericsPolicy("bf16").networks(cpu):
        other = threading.Thread(target=lambda: seen.append(lin(x).dtype))
        other.start()
        other.join()
    assert seen == [torch.float32]  # autocast is thread-local: another thread is unaffected


def test_tf32_gate_never_flips_the_switches_under_a_holder() -> None:
    """Two threads wanting different TF32 settings: the second waits for the first to leave.

    The switches are process-wide flags that exist without a GPU, so this runs on CPU.
    """
    cuda = torch.device("cuda")  # only names the device: nothing is allocated
    matmul = torch.backends.cuda.matmul
    old = matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    events = []
    entered = threading.Event()

    def exact_call():
        entered.wait()
        with _TF32_GATE.hold(cuda, False):
            events.append(("exact in", matmul.fp32_precision))

    try:
        worker = threading.Thread(target=exact_call)
        worker.start()
        with _TF32_GATE.hold(cuda, True):
            entered.set()
            time.sleep(0.2)  # the other thread is waiting now
            events.append(("tf32 still", matmul.fp32_precision))
        worker.join(timeout=10)
        assert events == [("tf32 still", "tf32"), ("exact in", "ieee")]
        with _TF32_GATE.hold(cuda, True), pytest.raises(RuntimeError, match="nested policy"):
            with _TF32_GATE.hold(cuda, False):
                pass
        # The process default (set_numerics_policy: TF32 on CUDA) returns after an exact call.
        _TF32_GATE.set_default(True)
        with _TF32_GATE.hold(cuda, False):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = old
        _TF32_GATE._tf32 = _TF32_GATE._default = None
