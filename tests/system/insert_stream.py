"""Insert continuously into a node, many requests in flight, recording every acknowledgement.

    python insert_stream.py ADDRESS OUTPUT TYPE TAG [IN_FLIGHT]

Each acknowledged insert is one line ``ID N`` in OUTPUT, written (and flushed) after the node
acknowledged it, so every line is an insert the node promised to keep; document N is
``{"tag": TAG, "n": N, "pad": ...}`` (see :func:`document`). The first failed insert stops the
stream: the failures are counted on the last line ``# failed COUNT TYPES``, the outstanding
inserts are waited for, and the script exits 0. It runs until the node goes away or it is
killed.
"""

import sys

from twisted.internet import defer, task

from nodedb import errors
from nodedb.client import connect


def document(tag, n):
    return {"tag": tag, "n": n, "pad": "x" * (n % 97)}


async def stream(reactor, address, output, record_type, tag, in_flight):
    client = await connect(reactor, [address], timeout=5.0)
    state = {"next": 0, "stopping": False, "failures": {}, "outstanding": 0}
    done = defer.Deferred()

    def launch():
        n = state["next"]
        state["next"] += 1
        state["outstanding"] += 1
        d = client.insert(record_type, document(tag, n))
        d.addCallbacks(acknowledged, failed, (n,))
        d.addBoth(settle)

    def acknowledged(element_id, n):
        output.write(f"{element_id} {n}\n")
        output.flush()

    def failed(failure):
        kind = failure.value.wire_name if isinstance(failure.value, errors.NodeDBError) else repr(failure.value)
        state["failures"][kind] = state["failures"].get(kind, 0) + 1
        state["stopping"] = True

    def settle(_):
        state["outstanding"] -= 1
        if not state["stopping"]:
            launch()
        elif state["outstanding"] == 0 and not done.called:
            done.callback(None)

    for _ in range(in_flight):
        launch()
    await done
    await client.close()
    count = sum(state["failures"].values())
    output.write(f"# failed {count} {','.join(sorted(state['failures']))}\n")
    output.flush()


def main(reactor, address, output_path, record_type, tag, in_flight="200"):
    output = open(output_path, "w", encoding="ascii")
    return defer.ensureDeferred(stream(reactor, address, output, record_type, tag, int(in_flight)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
