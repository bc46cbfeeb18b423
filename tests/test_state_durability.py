"""Stored state through real servers and the official SDK: what a server
wrote is all there, unchanged and continuable, after it is killed (SIGKILL)
and another starts on the same file; many writers at once neither lose nor
interleave items; --state-retention-days deletes what expired (and says how
much); and a --state file that is no database stops the server with one
clear line."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

import openapi
from conftest import running_server

MODEL = "smollm2-135m-instruct"
GREETING = [
    {"role": "system", "content": "You are a friendly assistant who remembers what people tell you about themselves."},
    {"role": "user", "content": "Hello! My name is Ann and I keep bees in my garden."},
]


def serve(tmp_path: Path, name: str, *args: str):
    """A server of the chat model alone, keeping its state in tmp_path/state.sqlite3 (shared by every server of a test)."""
    return running_server(tmp_path / f"{name}.log", "--model", MODEL, "--state", str(tmp_path / "state.sqlite3"), *args)


def sync_client(url: str) -> openai.OpenAI:
    # No retries: a retried write would add its items twice and hide the failure.
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def sent(schema: str, raw) -> dict:
    """The JSON the server sent (not the SDK's parse of it), checked against the spec's ``schema``."""
    body = raw.http_response.json()
    openapi.validate(schema, body)
    return body


def respond(client: openai.OpenAI, text: str, **kw) -> dict:
    return sent("Response", client.responses.with_raw_response.create(model=MODEL, input=text, max_output_tokens=8, temperature=0, **kw))


def input_items(client: openai.OpenAI, response_id: str) -> list[dict]:
    return client.responses.input_items.with_raw_response.list(response_id, order="asc", limit=100).http_response.json()["data"]


def conversation_items(client: openai.OpenAI, conversation_id: str) -> list[dict]:
    """Every item of the conversation, oldest first."""
    out, after = [], openai.omit
    while True:
        page = sent("ConversationItemList",
                    client.conversations.items.with_raw_response.list(conversation_id, order="asc", limit=100, after=after))
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def covers(later: dict, earlier: dict) -> bool:
    """``later`` was prompted with all of ``earlier``'s turn: its prompt and its answer (and more)."""
    return later["usage"]["input_tokens"] >= earlier["usage"]["input_tokens"] + earlier["usage"]["output_tokens"]


def test_what_was_stored_survives_a_killed_server_and_can_be_continued(tmp_path):
    with serve(tmp_path, "first") as (proc, url):
        client = sync_client(url)
        alone = respond(client, "My name is Ann. What is a good name for a bee?", metadata={"case": "alone"})
        alone_inputs = input_items(client, alone["id"])
        conv = sent("ConversationResource", client.conversations.with_raw_response.create(items=GREETING, metadata={"case": "conv"}))
        turn = respond(client, "What do I keep in my garden?", conversation=conv["id"])
        items = conversation_items(client, conv["id"])
        assert len(items) == len(GREETING) + 2
        proc.kill()  # SIGKILL: nothing is flushed or closed; every write that returned must already be on disk
        proc.wait()

    with serve(tmp_path, "second") as (_, url):
        client = sync_client(url)
        assert sent("Response", client.responses.with_raw_response.retrieve(alone["id"])) == alone
        assert input_items(client, alone["id"]) == alone_inputs
        assert sent("ConversationResource", client.conversations.with_raw_response.retrieve(conv["id"])) == conv
        assert conversation_items(client, conv["id"]) == items
        assert sent("Response", client.responses.with_raw_response.retrieve(turn["id"])) == turn

        continued = respond(client, "And what is my name?", previous_response_id=alone["id"])
        assert continued["previous_response_id"] == alone["id"] and covers(continued, alone)
        in_conv = respond(client, "And what is my name?", conversation=conv["id"])
        assert covers(in_conv, turn)
        after = conversation_items(client, conv["id"])
        assert after[:len(items)] == items and after[-1] == in_conv["output"][0] and len(after) == len(items) + 2


def wait_for_line(log: Path, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the log:\n{log.read_text()}")


def test_after_a_restart_the_recent_histories_are_in_the_prefix_cache_again(tmp_path):
    with serve(tmp_path, "first") as (proc, url):
        client = sync_client(url)
        conv = client.conversations.create(items=GREETING)
        respond(client, "What do I keep in my garden?", conversation=conv.id)
        chain = respond(client, "Tell me about honey bees and how they make honey.")
        chain = respond(client, "And about bumblebees?", previous_response_id=chain["id"])
        proc.kill()
        proc.wait()

    # Without warming, the first continuation after a restart computes its whole history.
    with serve(tmp_path, "cold", "--state-warm", "0") as (proc, url):
        cold = respond(sync_client(url), "What is my name?", conversation=conv.id, store=False)
        assert cold["usage"]["input_tokens_details"]["cached_tokens"] == 0
    # (That turn was not stored, but it joined the conversation: its history grew by a turn.)
    with serve(tmp_path, "warm") as (_, url):
        warmed = wait_for_line(tmp_path / "warm.log", r"warmed the prefix cache with (\d+) recent histories \((\d+) tokens\)")
        assert warmed[1] == "2"  # the conversation and the chain (its head only)
        client = sync_client(url)
        in_conv = respond(client, "What is my name?", conversation=conv.id)
        on_chain = respond(client, "Which of them makes more honey?", previous_response_id=chain["id"])
        for turn in (in_conv, on_chain):
            cached, prompt = turn["usage"]["input_tokens_details"]["cached_tokens"], turn["usage"]["input_tokens"]
            # Every whole block of the history (the new turn is the last 20-odd tokens).
            assert cached >= prompt - 40 and cached % 16 == 0, turn["usage"]


def test_a_stored_chat_completion_survives_a_killed_server(tmp_path):
    with serve(tmp_path, "first") as (proc, url):
        client = sync_client(url)
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
        made = sent("CreateChatCompletionResponse", client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, store=True, metadata={"case": "chat"}, max_tokens=8, temperature=0))
        kept = sent("CreateChatCompletionResponse", client.chat.completions.with_raw_response.retrieve(made["id"]))
        assert kept["id"] == made["id"] and kept["choices"] == made["choices"] and kept["usage"] == made["usage"]
        kept_messages = client.chat.completions.messages.with_raw_response.list(made["id"], order="asc").http_response.json()
        assert [(m["role"], m["content"]) for m in kept_messages["data"]] == [(m["role"], m["content"]) for m in messages]
        proc.kill()
        proc.wait()

    with serve(tmp_path, "second") as (_, url):
        client = sync_client(url)
        assert sent("CreateChatCompletionResponse", client.chat.completions.with_raw_response.retrieve(made["id"])) == kept
        assert client.chat.completions.messages.with_raw_response.list(made["id"], order="asc").http_response.json() == kept_messages
        assert [c.id for c in client.chat.completions.list(metadata={"case": "chat"})] == [made["id"]]


def test_concurrent_writers_lose_nothing_and_never_interleave(tmp_path):
    """32 stored responses at once, half of them in one conversation, and 32
    additions of 3 items each to that conversation, all in flight together."""
    with serve(tmp_path, "serve") as (_, url):
        client = sync_client(url)
        conv = client.conversations.create(metadata={"case": "crowd"})

        async def crowd():
            aclient = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)

            async def response(n: int) -> dict:
                kw = {"conversation": conv.id} if n % 2 == 0 else {}
                raw = await aclient.responses.with_raw_response.create(model=MODEL, input=f"r{n}", max_output_tokens=8, **kw)
                return sent("Response", raw)

            async def add(n: int) -> dict:
                raw = await aclient.conversations.items.with_raw_response.create(
                    conv.id, items=[{"role": "user", "content": f"c{n}.{k}"} for k in range(3)])
                return sent("ConversationItemList", raw)

            try:
                # Interleaved, so additions and responses really are in flight together.
                return await asyncio.gather(*[call(n) for n in range(32) for call in (response, add)])
            finally:
                await aclient.close()

        results = asyncio.run(crowd())
        responses, additions = results[0::2], results[1::2]

        for made in responses:
            assert sent("Response", client.responses.with_raw_response.retrieve(made["id"])) == made
        items = conversation_items(client, conv.id)
        position = {item["id"]: at for at, item in enumerate(items)}
        assert len(position) == len(items) == 16 * 2 + 32 * 3  # every item once, none lost

        for n, added in enumerate(additions):
            ids = [item["id"] for item in added["data"]]
            assert [item["content"][0]["text"] for item in added["data"]] == [f"c{n}.{k}" for k in range(3)]
            at = position[ids[0]]
            assert [item["id"] for item in items[at:at + 3]] == ids  # contiguous, in order

        for n, made in enumerate(responses):
            if n % 2:
                assert made["conversation"] is None
                continue
            (given,) = input_items(client, made["id"])
            assert given["content"][0]["text"] == f"r{n}"
            at = position[given["id"]]
            assert items[at] == given and items[at + 1] == made["output"][0]  # its input, then at once its output


def test_retention_deletes_what_expired_and_says_how_much(tmp_path):
    with serve(tmp_path, "first") as (_, url):
        client = sync_client(url)
        alone = client.responses.create(model=MODEL, input="Hi.", max_output_tokens=8)
        conv = client.conversations.create(items=[{"role": "user", "content": "Hi."}])
        turn = client.responses.create(model=MODEL, input="Hello?", conversation=conv.id, max_output_tokens=8)
        written = time.time()
    # Last writes are kept in whole seconds: wait until they are older than the
    # retention (0.00001 days, 0.864 s) by a full second at least.
    time.sleep(max(0.0, written + 2.2 - time.time()))

    with serve(tmp_path, "second", "--state-retention-days", "0.00001") as (_, url):
        log = tmp_path / "second.log"
        deadline = time.monotonic() + 30
        while not (found := re.search(r"state: deleted (\d+) expired stored objects", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert found[1] == "3"  # two responses and the conversation
        client = sync_client(url)
        for gone in (lambda: client.responses.retrieve(alone.id), lambda: client.responses.retrieve(turn.id),
                     lambda: client.conversations.retrieve(conv.id), lambda: client.conversations.items.list(conv.id)):
            with pytest.raises(openai.NotFoundError):
                gone()
        # What is written now is kept (until the next purge, an hour away).
        fresh = client.conversations.create()
        assert client.conversations.retrieve(fresh.id).id == fresh.id


@pytest.mark.parametrize("days", ["inf", "nan", "-1"])
def test_a_retention_that_is_no_number_of_days_is_refused_with_one_line(tmp_path, days):
    run = subprocess.run([sys.executable, "-m", "pycompat", "serve", "--port", "0", "--model", MODEL,
                          "--state", str(tmp_path / "state.sqlite3"), "--state-retention-days", days],
                         capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in output and "serving" not in output, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "--state-retention-days" in errors[0], output


def test_a_retention_longer_than_time_itself_keeps_everything(tmp_path):
    """Its cutoff is before 1970 (and past what SQLite's integers hold): nothing expires, and the purge does not fail."""
    with serve(tmp_path, "first") as (_, url):
        conv = sync_client(url).conversations.create()
    with serve(tmp_path, "second", "--state-retention-days", "1e300") as (_, url):
        assert sync_client(url).conversations.retrieve(conv.id).id == conv.id
        time.sleep(0.5)  # the purge ran at start: give a failure time to reach the log (the teardown looks for a traceback)
    assert "purging expired objects failed" not in (tmp_path / "second.log").read_text()


@pytest.mark.parametrize("kind", ["text file", "directory"])
def test_a_state_path_that_is_no_database_stops_the_server_with_one_clear_line(tmp_path, kind):
    path = tmp_path / "notes.txt"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("These are my notes, not a database.\n" * 10)
    run = subprocess.run([sys.executable, "-m", "pycompat", "serve", "--port", "0", "--model", MODEL, "--state", str(path)],
                         capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(path) in errors[0] and "--state" in errors[0], output
    assert "serving" not in output
    if kind == "text file":
        assert path.read_text() == "These are my notes, not a database.\n" * 10  # left as it was
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # and no -wal or -shm beside it
