"""HL7 v2 delivery: resend bounding, endpoints, one MLLP exchange against a loopback
receiver (asyncio server using the project's framing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fhir.hl7v2 import MllpDecoder, build_ack, frame, read_header
from streams.deliver_hl7 import (
    MllpLink,
    SendFailedError,
    after_failure,
    endpoint,
    host_port,
    send,
)
from streams.settings import Settings

MSG = b"MSH|^~\\&|WARDWATCH||R||20260101000000+0000||ORU^R01^ORU_R01|abc-1|P|2.5.1\rPID|1||p\r"


def test_resends_are_bounded_then_error_at_the_longest_backoff() -> None:
    s = Settings(delivery_hl7_max_attempts=4, delivery_backoff_initial_s=1.0,
                 delivery_backoff_max_s=30.0)  # fmt: skip
    plan = [after_failure(n, s) for n in range(1, 7)]
    assert plan == [(1.0, False), (2.0, False), (4.0, False), (30.0, True), (30.0, True),
                    (30.0, True)]  # fmt: skip
    assert after_failure(1, Settings(delivery_hl7_max_attempts=1)) == (300.0, True)


def test_endpoints() -> None:
    assert host_port(endpoint("10.0.0.5", 2575)) == ("10.0.0.5", 2575, False)
    assert endpoint("lab.example", 2576, tls=True) == "mllps://lab.example:2576"
    assert host_port("mllps://lab.example:2576") == ("lab.example", 2576, True)
    for bad in (("", 1), ("h", 0), ("h", 65536)):
        with pytest.raises(ValueError, match="host and a port"):
            endpoint(*bad)
    with pytest.raises(ValueError, match="not an mllp"):
        host_port("http://h:1")


Answer = Callable[[bytes], Awaitable[bytes | None]]


async def _with_receiver(answer: Answer, body: Callable[[int], Awaitable[None]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = MllpDecoder()
        while chunk := await reader.read(65536):
            for f in dec.feed(chunk):
                assert isinstance(f, bytes)
                out = await answer(f)
                if out is not None:
                    writer.write(out)
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(port)
    finally:
        server.close()
        await server.wait_closed()


def _ack(code: str, cid: str | None = None) -> Answer:
    async def answer(f: bytes) -> bytes:
        h = read_header(f.decode().rstrip("\r"))
        if cid is not None:
            h = type(h)(control_id=cid)
        return frame(build_ack(h, code))  # type: ignore[arg-type]

    return answer


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (_ack("AA"), "AA"),
        (_ack("AE"), "MSA-1 AE"),
        (_ack("AR"), "MSA-1 AR"),
        (_ack("AA", cid="abc-2"), "MSA-2 does not match"),
    ],
)
def test_one_exchange(answer: Answer, outcome: str) -> None:
    async def body(port: int) -> None:
        link = MllpLink("127.0.0.1", port, 2.0)
        try:
            if outcome == "AA":
                assert await send(link, "abc-1", MSG) == "AA"
            else:
                with pytest.raises(SendFailedError, match=outcome):
                    await send(link, "abc-1", MSG)
        finally:
            await link.close()

    asyncio.run(_with_receiver(answer, body))


def test_no_ack_times_out_and_a_new_connection_is_used_next() -> None:
    calls: list[int] = []

    async def answer(f: bytes) -> bytes | None:
        calls.append(1)
        return None if len(calls) == 1 else await _ack("AA")(f)  # first one: never answered

    async def body(port: int) -> None:
        link = MllpLink("127.0.0.1", port, 0.3)
        with pytest.raises(SendFailedError):
            await send(link, "abc-1", MSG)
        assert await send(link, "abc-1", MSG) == "AA"
        await link.close()

    asyncio.run(_with_receiver(answer, body))
    assert len(calls) == 2


def test_refused_connection_is_a_send_failure() -> None:
    async def body() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(SendFailedError):
            await send(MllpLink("127.0.0.1", port, 1.0), "abc-1", MSG)

    asyncio.run(body())
