"""The pynvml boundary against the fake: each real error class, a hung call, off once."""
from __future__ import annotations

import time

import pytest

from fakenvml_load import load_fake, write
from watchdog_d.agent import nvml as nv


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = tmp_path / "nvml.json"
    monkeypatch.setenv("WD_FAKE_NVML", str(path))
    write(path, {"devices": [{"uuid": "GPU-a", "pci": "00000000:1B:00.0"}]})
    return path, load_fake()


def test_no_library_is_off(fake, monkeypatch):
    path, lib = fake
    monkeypatch.setenv("WD_FAKE_NVML", str(path) + ".missing")
    with pytest.raises(nv.Off, match="LibraryNotFound"):
        nv.Nvml.open(lib=lib)


@pytest.mark.parametrize("err", ["DriverNotLoaded", "LibRmVersionMismatch", "NoPermission"])
def test_init_errors_are_off(fake, err):
    path, lib = fake
    write(path, {"init_error": err})
    with pytest.raises(nv.Off, match=err):
        nv.Nvml.open(lib=lib)


def test_no_gpu_is_off(fake):
    path, lib = fake
    write(path, {"devices": []})
    with pytest.raises(nv.Off, match="no GPU"):
        nv.Nvml.open(lib=lib)


def test_errors_map_to_why(fake, capsys):
    path, lib = fake
    n = nv.Nvml.open(lib=lib)
    h = n.devices()[0].handle
    assert n.devices()[0].uuid == "GPU-a" and n.devices()[0].pci_bus_id == "00000000:1B:00.0"
    write(path, {"devices": [{"errors": {"nvmlDeviceGetPowerUsage": "NotSupported",
                                         "nvmlDeviceGetTemperature": "NoPermission",
                                         "nvmlDeviceGetUtilizationRates": "Unknown"}}]})
    whys = {}
    for _ in range(2):
        for check, fn, args in (("power", "nvmlDeviceGetPowerUsage", ()),
                                ("temp", "nvmlDeviceGetTemperature", (0,)),
                                ("util", "nvmlDeviceGetUtilizationRates", ())):
            with pytest.raises(nv.Failed) as e:
                n.call(check, fn, h, *args)
            whys.setdefault(check, []).append(e.value.why)
    assert whys == {"power": ["not_supported"] * 2, "temp": ["no_permission", "off"],
                    "util": ["error", "error"]}
    assert capsys.readouterr().err.count("gpu_check_off check=temp reason=no_permission") == 1
    write(path, {"devices": [{"lost": True}]})
    with pytest.raises(nv.Failed) as e:
        n.call("power", "nvmlDeviceGetPowerUsage", h)
    assert e.value.why == "lost"


def test_hung_call_is_bounded_and_said_once(fake, capsys):
    path, lib = fake
    n = nv.Nvml.open(lib=lib, timeout_s=0.2)
    h = n.devices()[0].handle
    write(path, {"devices": [{"hang": {"nvmlDeviceGetTemperature": 2}}]})
    t0 = time.monotonic()
    with pytest.raises(nv.Failed) as e:
        n.call("temp", "nvmlDeviceGetTemperature", h, 0)
    assert e.value.why == "hung" and time.monotonic() - t0 < 1.0
    with pytest.raises(nv.Failed) as e:                  # off from now on, at once
        n.call("temp", "nvmlDeviceGetTemperature", h, 0)
    assert e.value.why == "off"
    assert n.call("power", "nvmlDeviceGetPowerUsage", h) == 100_000    # a fresh worker
    assert capsys.readouterr().err.count("gpu_check_off check=temp reason=hung") == 1


def test_hung_init_is_off(fake):
    path, lib = fake
    write(path, {"hang": {"nvmlInit": 2}, "devices": [{}]})
    t0 = time.monotonic()
    with pytest.raises(nv.Off, match="hung"):
        nv.Nvml.open(lib=lib, timeout_s=0.2)
    assert time.monotonic() - t0 < 1.0


def test_event_wait_timeout_is_nothing(fake):
    path, lib = fake
    n = nv.Nvml.open(lib=lib)
    h = n.devices()[0].handle
    es = n.call("events", "nvmlEventSetCreate")
    n.call("events", "nvmlDeviceRegisterEvents", h, lib.nvmlEventTypeXidCriticalError, es)
    with pytest.raises(nv.Failed) as e:
        n.call("xid", "nvmlEventSetWait_v2", es, 50, lane="events")
    assert e.value.why == "timeout"
    write(path, {"devices": [{}], "events": [{"id": 1, "gpu": 0, "xid": 79}]})
    data = n.call("xid", "nvmlEventSetWait_v2", es, 500, lane="events")
    assert data.eventData == 79 and nv.handle_key(data.device) == nv.handle_key(h)
