"""Baseline for benches/sse.rs: a well-written Python asyncio SSE server (stdlib only).

It follows the old backend's pattern done well: one asyncio subprocess per run read line by
line, each entry encoded to JSON once and kept in a list, every client a cursor over that
list woken by a Condition (no per-client queue, no dropped lines).

    python3 benches/sse_baseline.py PORT_FILE
Endpoints: GET /create?n=N -> run id (not started); GET /start/ID -> runs `seq 1 N`;
GET /stream/ID -> SSE (log events, then `complete`, then the connection closes).
"""
import asyncio
import datetime
import json
import sys


class Run:
    def __init__(self, n):
        self.n = n
        self.events = []
        self.done = False
        self.cond = asyncio.Condition()

    async def start(self):
        proc = await asyncio.create_subprocess_exec(
            "seq", "1", str(self.n), stdout=asyncio.subprocess.PIPE)
        seq = 0
        async for raw in proc.stdout:
            now = datetime.datetime.now(datetime.timezone.utc)
            entry = {"seq": seq, "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                     "stream": "stdout", "level": "INFO",
                     "message": raw.rstrip(b"\n").decode("utf-8", "replace"), "end": "lf"}
            self.events.append(f"id: {seq}\nevent: log\ndata: {json.dumps(entry)}\n\n".encode())
            seq += 1
            # Wake readers once per burst of lines rather than once per line.
            if len(self.events) % 64 == 0:
                async with self.cond:
                    self.cond.notify_all()
        await proc.wait()
        self.events.append(b'event: complete\ndata: {"status": "completed"}\n\n')
        self.done = True
        async with self.cond:
            self.cond.notify_all()


runs = {}


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    path = head.split(b" ", 2)[1].decode()
    if path.startswith("/create"):
        n = int(path.split("n=")[1])
        run_id = str(len(runs))
        runs[run_id] = Run(n)
        body = run_id.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    elif path.startswith("/start/"):
        asyncio.ensure_future(runs[path.rsplit("/", 1)[1]].start())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    elif path.startswith("/stream/"):
        run = runs[path.rsplit("/", 1)[1]]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nConnection: close\r\n\r\nretry: 2000\n\n")
        cursor = 0
        try:
            while True:
                if cursor < len(run.events):
                    batch = run.events[cursor:cursor + 1024]
                    cursor += len(batch)
                    writer.write(b"".join(batch))
                    await writer.drain()
                    continue
                if run.done:
                    break
                async with run.cond:
                    await run.cond.wait_for(lambda: cursor < len(run.events) or run.done)
        except ConnectionError:
            pass
    try:
        await writer.drain()
        writer.close()
    except ConnectionError:
        pass


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    with open(sys.argv[1], "w") as f:
        f.write(str(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
