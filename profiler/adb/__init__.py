"""ADB access to Android devices: transports, device-script output parsers, the host key."""

from .parsers import BenchOutputError, BenchResult, ParseError, PhoneInfo, parse_bench, parse_info, parse_prepare
from .transport import (
    AdbCommandError,
    AdbConnectionError,
    AdbError,
    AdbServerTransport,
    AdbShellTransport,
    AdbTimeout,
    open_transport,
)

__all__ = [
    "AdbError",
    "AdbTimeout",
    "AdbConnectionError",
    "AdbCommandError",
    "AdbShellTransport",
    "AdbServerTransport",
    "open_transport",
    "ParseError",
    "BenchOutputError",
    "PhoneInfo",
    "BenchResult",
    "parse_info",
    "parse_bench",
    "parse_prepare",
]
