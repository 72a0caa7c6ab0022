"""Device, precision and thread decisions (unetlab.hardware)."""
import pytest
import torch

from unetlab import hardware
from unetlab.errors import UnetlabError


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("UNETLAB_NO_NATIVE_BF16", raising=False)
    has = bool(set(hardware.cpu_flags()) & {"amx_bf16", "avx512_bf16"})
    assert hardware.native_bf16("cpu") == (has and torch.backends.mkldnn.is_available())
    assert hardware.resolve_precision("auto", "cpu") == ("bf16" if hardware.native_bf16() else "fp32")


def test_auto_falls_back_to_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setenv("UNETLAB_NO_NATIVE_BF16", "1")
    assert hardware.native_bf16("cpu") is False
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    assert hardware.resolve_precision("bf16", "cpu") == "bf16"   # asked for: honoured


def test_fallback_when_cpu_flags_are_missing(monkeypatch):
    monkeypatch.delenv("UNETLAB_NO_NATIVE_BF16", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert hardware.resolve_precision("auto") == "fp32"
    assert "no native bf16" in hardware.describe_precision("fp32")


def test_describe_precision_sentences(monkeypatch):
    monkeypatch.delenv("UNETLAB_NO_NATIVE_BF16", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16", "avx2"}))
    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": True)
    assert hardware.describe_precision("fp32") == "fp32 (asked for; the CPU also has avx512_bf16)"
    assert hardware.describe_precision("bf16") == "bf16 (CPU has avx512_bf16)"


@pytest.mark.parametrize("bad", ["fp16x", "", "float32"])
def test_bad_precision_names_the_option(bad):
    with pytest.raises(UnetlabError, match="--precision"):
        hardware.resolve_precision(bad)


def test_autocast_bf16_computes_in_bf16_and_fp32_does_not():
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    with hardware.autocast("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
    with hardware.autocast("fp32", "cpu"):
        assert conv(x).dtype == torch.float32
    assert conv.weight.dtype == torch.float32          # master weights untouched


@pytest.mark.parametrize("bad", ["gpu", "cuda:99", "tpu"])
def test_bad_device_names_the_option(bad):
    if bad == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("absurd machine")
    with pytest.raises(UnetlabError, match="--device"):
        hardware.resolve_device(bad)


def test_thread_count_honours_the_request_and_measures_otherwise():
    assert hardware.thread_count(3)[0] == 3
    with pytest.raises(UnetlabError, match="--threads"):
        hardware.thread_count(-1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)                 # something to choose from, also on one core
    try:
        calls = []
        n, why = hardware.thread_count(None, step=lambda: calls.append(torch.get_num_threads()))
        assert n in (1, 2) and why
        assert 1 in calls and 2 in calls                # both settings were timed
        assert torch.get_num_threads() == 2             # and the setting was restored
    finally:
        torch.set_num_threads(before)


def test_thread_count_does_not_measure_when_it_cannot_pay():
    """Fewer steps than measuring costs, or one thread only: torch's default, no step run."""
    before = torch.get_num_threads()
    calls = []
    try:
        torch.set_num_threads(2)
        for steps in range(hardware.MIN_STEPS_TO_MEASURE):
            n, why = hardware.thread_count(None, lambda: calls.append(1), steps=steps)
            assert n == 2 and "not measured" in why
        torch.set_num_threads(1)
        n, why = hardware.thread_count(None, lambda: calls.append(1), steps=100)
        assert n == 1 and "one core" in why
        assert calls == []
        torch.set_num_threads(2)
        hardware.thread_count(None, lambda: calls.append(1), steps=hardware.MIN_STEPS_TO_MEASURE)
        assert calls                                    # enough steps: measured
    finally:
        torch.set_num_threads(before)


def test_fp16_autocast_and_prediction_close_to_fp32():
    """--precision fp16 (a GPU without bf16): convolutions in float16, the prediction within
    2e-2 of fp32 (here on the CPU, where fp16 is emulated)."""
    import numpy as np

    from unetlab.model import UNet
    from unetlab.predict import predict_tiled

    with hardware.autocast("fp16", "cpu"):
        y = torch.nn.functional.conv2d(torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3))
    assert y.dtype == torch.float16
    assert "fp16" in hardware.describe_precision("fp16")
    torch.manual_seed(0)
    net = UNet(width=4, depth=2)
    img = np.random.default_rng(0).random((60, 70)).astype(np.float32)
    a = predict_tiled(net, img, precision="fp32")
    b = predict_tiled(net, img, precision="fp16")
    assert np.abs(a - b).max() < 2e-2 and not np.array_equal(a, b)
