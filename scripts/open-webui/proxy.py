"""Tiny logging reverse proxy: python proxy.py LISTEN_PORT UPSTREAM_PORT LOGFILE
Logs each request (method, path, JSON body) and response (status, body; streams
line by line, truncated) as JSON lines, and forwards everything to 127.0.0.1:UPSTREAM_PORT."""
import json, sys, time
from aiohttp import web, ClientSession, ClientTimeout

LISTEN, UP, LOG = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}

def log(rec):
    rec["t"] = round(time.time(), 3)
    with open(LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")

async def handle(req: web.Request):
    body = await req.read()
    try:
        jb = json.loads(body) if body else None
    except Exception:
        jb = body[:2000].decode("utf-8", "replace")
    rec = {"dir": "req", "method": req.method, "path": req.path_qs, "body": jb,
           "headers": {k: v for k, v in req.headers.items() if k.lower() in ("content-type", "authorization", "user-agent", "accept")}}
    log(rec)
    async with ClientSession(timeout=ClientTimeout(total=600), auto_decompress=False) as s:
        async with s.request(req.method, f"http://127.0.0.1:{UP}{req.path_qs}", data=body,
                             headers={k: v for k, v in req.headers.items() if k.lower() not in HOP}) as r:
            resp = web.StreamResponse(status=r.status, headers={k: v for k, v in r.headers.items() if k.lower() not in HOP})
            await resp.prepare(req)
            chunks, n = [], 0
            async for chunk in r.content.iter_any():
                await resp.write(chunk)
                if n < 20000:
                    chunks.append(chunk); n += len(chunk)
            await resp.write_eof()
            text = b"".join(chunks).decode("utf-8", "replace")
            log({"dir": "resp", "method": req.method, "path": req.path_qs, "status": r.status,
                 "content_type": r.headers.get("content-type"), "body": text[:20000]})
            return resp

app = web.Application(client_max_size=1 << 28)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=LISTEN, print=None)
