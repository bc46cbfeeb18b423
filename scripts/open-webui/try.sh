#!/usr/bin/env bash
# Usage: scripts/open-webui/try.sh MODE PYCOMPAT_PORT        MODE = openai | ollama
#
# Open WebUI is too large for CI (its venv is about 7 GB); this is how it was
# tried by hand. Set-up, once (OWUI_DIR defaults to .cache/open-webui):
#   python3 -m venv $OWUI_DIR/venv && $OWUI_DIR/venv/bin/pip install open-webui playwright
#   apt-get install chromium        # drive.py runs Debian's /usr/bin/chromium headless

# Starts Open WebUI (offline, no login) against a pycompat already running on
# 127.0.0.1:PYCOMPAT_PORT, with a logging proxy in between, drives one chat in
# headless Chromium, saves $OWUI_DIR/<MODE>-mode.png and stops Open WebUI.
# Every request Open WebUI sent to pycompat (method, path, JSON body, status,
# response) is left in $OWUI_DIR/<MODE>-requests.jsonl; Open WebUI's log in
# $OWUI_DIR/<MODE>-owui.log.
# Knobs (environment):
#   MODEL=smollm2-135m-instruct   PROMPT="What is the capital of France?"
#   OWUI_PORT=8080  PROXY_PORT=PYCOMPAT_PORT+1  TIMEOUT=300 (seconds for the answer)
#   BUILTIN_TOOLS=off  (on = Open WebUI 0.12's default: ~36 built-in tools sent with
#                      every chat, ~6300 prompt tokens, over a 2048-token context)
#   SYSTEM_PROMPT="You are a helpful assistant."  (empty = none; SmolLM2-135M rambles
#                      in French under its own default system prompt)
#   TEMPERATURE=0  MAX_TOKENS=256  (empty = leave unset)
#   EXTRA_PARAMS='{"keep_alive":"5m","think":false,"top_k":40}'  more default model
#                      params (Open WebUI's Advanced Params names), merged in
set -u
MODE=${1:?usage: try.sh openai|ollama PYCOMPAT_PORT}
PORT=${2:?usage: try.sh openai|ollama PYCOMPAT_PORT}
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
HERE=${OWUI_DIR:-$SCRIPTS/../../.cache/open-webui}
mkdir -p "$HERE"; HERE=$(cd "$HERE" && pwd)
# Ollama mode lists models as Ollama does, with their tag.
if [ "$MODE" = ollama ]; then MODEL=${MODEL:-smollm2-135m-instruct:latest}; else MODEL=${MODEL:-smollm2-135m-instruct}; fi
PROMPT=${PROMPT:-What is the capital of France?}
OWUI_PORT=${OWUI_PORT:-8080}
PROXY_PORT=${PROXY_PORT:-$((PORT + 1))}
TIMEOUT=${TIMEOUT:-300}
BUILTIN_TOOLS=${BUILTIN_TOOLS:-off}
SYSTEM_PROMPT=${SYSTEM_PROMPT-You are a helpful assistant.}
TEMPERATURE=${TEMPERATURE-0}
MAX_TOKENS=${MAX_TOKENS-256}
REQLOG=$HERE/$MODE-requests.jsonl
OWUILOG=$HERE/$MODE-owui.log
SHOT=$HERE/$MODE-mode.png

curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "no pycompat answering at 127.0.0.1:$PORT/health" >&2; exit 1; }
if curl -s -o /dev/null "http://127.0.0.1:$OWUI_PORT/"; then echo "port $OWUI_PORT is already in use" >&2; exit 1; fi

# Offline, single user, config from the environment only, a fresh data dir per run.
export DATA_DIR=$HERE/data-$MODE
rm -rf "$DATA_DIR"; mkdir -p "$DATA_DIR"
export WEBUI_AUTH=False WEBUI_SECRET_KEY=owui-local-test-key ENABLE_PERSISTENT_CONFIG=false
export OFFLINE_MODE=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export ENABLE_VERSION_UPDATE_CHECK=false ENABLE_WEB_SEARCH=false
export RAG_EMBEDDING_MODEL_AUTO_UPDATE=false RAG_RERANKING_MODEL_AUTO_UPDATE=false WHISPER_MODEL_AUTO_UPDATE=false
export SCARF_NO_ANALYTICS=true DO_NOT_TRACK=true ANONYMIZED_TELEMETRY=false
# Embeddings (only used for uploaded documents) from pycompat's /v1/embeddings, so no
# sentence-transformers model is loaded or downloaded. Not through the proxy.
export RAG_EMBEDDING_ENGINE=openai RAG_OPENAI_API_BASE_URL=http://127.0.0.1:$PORT/v1 RAG_OPENAI_API_KEY=x RAG_EMBEDDING_MODEL=all-minilm-l6-v2
case $MODE in
  openai) export OPENAI_API_BASE_URL=http://127.0.0.1:$PROXY_PORT/v1 OPENAI_API_KEY=x ENABLE_OPENAI_API=true ENABLE_OLLAMA_API=false ;;
  ollama) export OLLAMA_BASE_URL=http://127.0.0.1:$PROXY_PORT ENABLE_OLLAMA_API=true ENABLE_OPENAI_API=false ;;
  *) echo "MODE must be openai or ollama" >&2; exit 1 ;;
esac
[ "$BUILTIN_TOOLS" = on ] || export DEFAULT_MODEL_METADATA='{"capabilities":{"builtin_tools":false}}'
export DEFAULT_MODEL_PARAMS=$(EXTRA_PARAMS="${EXTRA_PARAMS:-}" TEMPERATURE="$TEMPERATURE" MAX_TOKENS="$MAX_TOKENS" python3 -c '
import json, os
p = {}
if os.environ["TEMPERATURE"]: p["temperature"] = float(os.environ["TEMPERATURE"])
if os.environ["MAX_TOKENS"]: p["max_tokens"] = int(os.environ["MAX_TOKENS"])
if os.environ["EXTRA_PARAMS"]: p.update(json.loads(os.environ["EXTRA_PARAMS"]))
print(json.dumps(p))')
export SYSTEM_PROMPT   # drive.py sets it as the user's system prompt (Settings > General)
echo "SYSTEM_PROMPT=$SYSTEM_PROMPT DEFAULT_MODEL_PARAMS=$DEFAULT_MODEL_PARAMS ${DEFAULT_MODEL_METADATA:+DEFAULT_MODEL_METADATA=$DEFAULT_MODEL_METADATA}"

: > "$REQLOG"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$p" 2>/dev/null
  done
}
trap cleanup EXIT INT TERM

"$HERE/venv/bin/python" "$SCRIPTS/proxy.py" "$PROXY_PORT" "$PORT" "$REQLOG" > "$HERE/$MODE-proxy.out" 2>&1 &
PIDS+=($!)
cd "$HERE"
nice -n 5 "$HERE/venv/bin/open-webui" serve --host 127.0.0.1 --port "$OWUI_PORT" > "$OWUILOG" 2>&1 &
PIDS+=($!)
for i in $(seq 1 90); do
  curl -sf "http://127.0.0.1:$OWUI_PORT/health" >/dev/null && break
  kill -0 "${PIDS[1]}" 2>/dev/null || { echo "Open WebUI exited; see $OWUILOG" >&2; exit 1; }
  sleep 2
done
curl -sf "http://127.0.0.1:$OWUI_PORT/health" >/dev/null || { echo "Open WebUI did not come up; see $OWUILOG" >&2; exit 1; }
echo "Open WebUI is up at http://127.0.0.1:$OWUI_PORT ($MODE mode, via proxy :$PROXY_PORT -> pycompat :$PORT)"

"$HERE/venv/bin/python" "$SCRIPTS/drive.py" "http://127.0.0.1:$OWUI_PORT/" "$MODEL" "$PROMPT" "$SHOT" "$TIMEOUT"
rc=$?
sleep 3   # let the title/tags/follow-up requests that follow an answer reach the log

echo "--- requests Open WebUI sent to pycompat ($REQLOG):"
"$HERE/venv/bin/python" - "$REQLOG" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["dir"] == "req":
        b = r["body"]
        if isinstance(b, dict):
            b = {k: (f"[{len(v)} items]" if k in ("messages", "tools") and isinstance(v, list) else v) for k, v in b.items()}
        print(f'{r["method"]} {r["path"]}', json.dumps(b)[:400] if b is not None else "")
    else:
        print(f'   -> {r["status"]} {r.get("content_type")} {r["body"][:160]!r}')
PY
echo "Errors in Open WebUI's log:"; grep -E "ERROR|Traceback" "$OWUILOG" | head -20
echo "screenshot: $SHOT (drive rc=$rc)"
exit $rc
