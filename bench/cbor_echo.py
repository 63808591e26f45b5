"""A bare Twisted server that answers CBOR frames like a node would, doing no work in between.

Run by ``bench/single_node.py`` as the network ceiling: ``python bench/cbor_echo.py PORT``.
It listens on 127.0.0.1:PORT for nodedb-style frames (4-byte big-endian length, one CBOR map),
decodes each request and replies with a CBOR map of the same shape as a node's reply:
``insert`` gets ``{"id": n, "ok": new_id}``, ``get`` gets ``{"id": n, "ok": [doc, version]}``
where doc is the last document it was sent. Nothing is stored and nothing is checked.
"""

import sys

import cbor2
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver

FIRST_ID = 1 << 48  # ids of partition 1, the size of a real node's ids on the wire


class Echo(Int32StringReceiver):
    MAX_LENGTH = 4 * 1024 * 1024

    def stringReceived(self, frame):
        request = cbor2.loads(frame)
        state = self.factory
        if "doc" in request:
            state.doc = request["doc"]
            state.next_id += 1
            value = state.next_id
        elif "key" in request:
            value = [state.doc, request["key"]]
        else:
            value = None
        self.sendString(cbor2.dumps({"id": request["id"], "ok": value}))


class EchoFactory(Factory):
    protocol = Echo
    noisy = False

    def __init__(self):
        self.doc = {}
        self.next_id = FIRST_ID


def main(port):
    reactor.listenTCP(port, EchoFactory(), interface="127.0.0.1", backlog=50)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
