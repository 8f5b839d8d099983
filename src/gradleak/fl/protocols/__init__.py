"""Client protocols, registered by decorator in :data:`PROTOCOLS` — one file each (see
:mod:`gradleak.fl.protocols.base` for the interface and docs/protocols.md for how to add one)."""
from gradleak.fl.protocols.base import (PROTOCOLS, ClientProtocol, Setting, from_delta, protocol_of,
                                        register_protocol, to_delta, upload_of)
from gradleak.fl.protocols import fedsgd, fedavg, fedprox, scaffold  # noqa: F401,E402  (register)

__all__ = ["PROTOCOLS", "ClientProtocol", "Setting", "from_delta", "protocol_of", "register_protocol",
           "to_delta", "upload_of"]
