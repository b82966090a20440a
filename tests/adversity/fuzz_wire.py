"""atheris fuzz harness for the wire codec and the startup parser (not run by pytest).

    pip install atheris
    python tests/adversity/fuzz_wire.py -max_total_time=600 corpus/

Only ProtocolViolation (or ValueError from a decoder) may come out of these functions
for any input; anything else is a crash the fuzzer reports with the input that caused it.
See docs/fuzzing.md.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from proxy.wire import authentication, messages
    from proxy.wire.errors import ProtocolViolation
    from proxy.wire.framing import BackendScanner, FrontendFramer
    from proxy.wire.startup import StartupFramer, parse_startup_packet

DECODERS = (
    messages.decode_error_fields, messages.decode_parameter_status,
    messages.decode_backend_key_data, authentication.decode_authentication,
    authentication.decode_password, authentication.decode_sasl_initial_response,
    messages.decode_query,
    messages.decode_parse, messages.decode_bind, messages.decode_close_or_describe,
    messages.decode_negotiate_protocol_version, messages.decode_ready_for_query,
)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 3)
    split = fdp.ConsumeIntInRange(0, 64)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if target == 0:  # startup phase, then the tagged stream that follows
            startup = StartupFramer()
            startup.feed(payload[:split])
            startup.feed(payload[split:])
            while (packet := startup.next_packet()) is not None:
                parse_startup_packet(packet)
            frontend = FrontendFramer(max_message_size=1 << 20)
            frontend.feed(startup.remaining())
            while frontend.next_message() is not None:
                pass
        elif target == 1:  # client stream, batched
            frontend = FrontendFramer(max_message_size=1 << 20)
            frontend.feed(payload[:split])
            frontend.next_batch()
            frontend.feed(payload[split:])
            while frontend.next_batch() is not None:
                pass
        elif target == 2:  # server stream
            scanner = BackendScanner(frozenset(b"ZESCNRKt"), max_interesting_size=1 << 20)
            scanner.feed(payload[:split])
            scanner.feed(payload[split:])
        else:  # message body decoders
            DECODERS[split % len(DECODERS)](payload)
    except (ProtocolViolation, ValueError):
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
