"""bandwidth_limit in the definition, the rate limit of the splice loop, progress lines."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from zfsrepl import config, transfer
from zfsrepl.errors import ConfigError
from zfsrepl.transfer import Progress, pipe, progress_text


@pytest.mark.parametrize(("value", "rate"), [
    ("20M", 20 << 20), ("512K", 512 << 10), ("1.5G", 3 << 29), ("20MB/s", 20 << 20),
    ("20MiB", 20 << 20), ("10m", 10 << 20), (4096, 4096), ("1K", 1024), ("2048", 2048),
])
def test_bandwidth_values(value: object, rate: int) -> None:
    assert config.parse_bandwidth(value) == rate


@pytest.mark.parametrize("value", ["", "fast", "20X", "-1M", "0", 0, 100, True, 1.5, "20 M/h"])
def test_bad_bandwidth_values(value: object) -> None:
    assert config.parse_bandwidth(value) is None


def definition(**extra: object) -> dict[str, object]:
    return {"name": "s", "source": {"host": "a", "user": "src"},
            "destination": {"host": "b", "user": "dst"},
            "filesystem": [{"source": "tank/a", "destination": "backup/a"}], **extra}


def test_bandwidth_limit_in_a_definition_round_trips() -> None:
    svc = config.parse_service(definition(bandwidth_limit="20M"))
    assert svc.bandwidth_limit == 20 << 20
    assert 'bandwidth_limit = "20M"' in config.dump_service(svc)
    again = config.parse_service(_toml(config.dump_service(svc)))
    assert again == svc
    assert config.parse_service(definition()).bandwidth_limit is None
    assert "bandwidth_limit" not in config.dump_service(config.parse_service(definition()))


def _toml(text: str) -> dict[str, object]:
    import tomllib

    return tomllib.loads(text)


def test_a_bad_bandwidth_limit_names_file_key_and_what_is_expected() -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse_service(definition(bandwidth_limit="20 per second"), Path("/c/s.toml"))
    msg = str(exc.value)
    assert msg.startswith("/c/s.toml: bandwidth_limit: '20 per second' is not valid")
    assert '"20M"' in msg


def test_progress_text() -> None:
    assert progress_text("fs@1", 512, None, 1.0) == "fs@1: 512 B, 512 B/s"
    text = progress_text("fs@1", 10 << 20, 40 << 20, 2.0)
    assert text == "fs@1: 10.0 MiB of ~40.0 MiB (25%), 5.0 MiB/s, ETA 0:00:06"


def test_progress_on_a_terminal_and_in_a_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress("fs@1", 100, interactive=True, stream=out, clock=lambda: now[0])
    p.update(10)  # too soon: nothing
    now[0] = 1.0
    p.update(50)
    p.finish()
    assert out.getvalue().count("fs@1: 50 B of ~100 B (50%)") == 1
    assert out.getvalue().endswith("\r\033[K")

    caplog.set_level("INFO")
    daemon = Progress("fs@2", None, interactive=False, stream=io.StringIO(),
                      clock=lambda: now[0])
    assert daemon.interval == transfer.DAEMON_PROGRESS_INTERVAL
    now[0] = 20.0
    daemon.update(1)
    now[0] = 31.5
    daemon.update(2)
    lines = [r.message for r in caplog.records if "progress of fs@2" in r.message]
    assert len(lines) == 1


def test_the_size_is_asked_for_once_and_only_when_a_line_is_due() -> None:
    now = [0.0]
    asked: list[int] = []

    def estimate() -> int:
        asked.append(1)
        return 200

    out = io.StringIO()
    p = Progress("fs@1", estimate=estimate, interactive=True, stream=out,
                 clock=lambda: now[0])
    p.update(10)  # a stream that ends before the first line never asks
    assert asked == []
    now[0] = 1.0
    p.update(50)
    now[0] = 2.0
    p.update(100)
    assert asked == [1]
    assert "fs@1: 100 B of ~200 B (50%)" in out.getvalue()


@pytest.mark.skipif(not hasattr(os, "splice"), reason="no os.splice here")
def test_the_limit_holds_the_rate_without_python_buffers() -> None:
    size = 600 << 10
    limit = 1 << 20  # 1 MiB/s: ~0.6 s for the stream
    sender = [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'x' * {size})"]
    receiver = [sys.executable, "-c", "import sys; assert len(sys.stdin.buffer.read()) == "
                f"{size}"]
    result = pipe(sender, receiver, "test", limit=limit)
    assert result.bytes == size
    assert result.seconds >= 0.45
    fast = pipe(sender, receiver, "test")
    assert fast.bytes == size


@pytest.mark.skipif(not hasattr(os, "splice"), reason="no os.splice here")
def test_a_failed_stream_tells_how_much_went_through() -> None:
    sender = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 1000)"]
    receiver = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(); sys.exit(3)"]
    with pytest.raises(transfer.TransferFailed) as exc:
        pipe(sender, receiver, "test")
    assert exc.value.sent == 1000

