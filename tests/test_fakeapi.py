"""The fake Messages API answers the real SDK the way the real API does (JSON and SSE)."""

from __future__ import annotations

import anthropic
import pytest

from tests.fakeapi import FakeAnthropic, text, tool_use


def test_plain_json_reply_and_request_log() -> None:
    with FakeAnthropic() as api:
        api.on("hello", text("hi there"), input_tokens=7, output_tokens=3)
        client = anthropic.Anthropic(base_url=api.url, api_key="sk-test", max_retries=0)
        msg = client.messages.create(model="claude-sonnet-5-5", max_tokens=100,
                                     messages=[{"role": "user", "content": "hello you"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "hi there"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.stop_reason) == (7, 3, "end_turn")
    [sent] = api.messages()
    assert sent.body["messages"][0]["content"] == "hello you"
    # Recent SDKs send the key as a bearer token, older ones as x-api-key.
    assert "sk-test" in (sent.headers.get("x-api-key", "") + sent.headers.get("authorization", ""))
    assert sent.rule == 0


def test_streamed_tool_use_is_assembled_by_the_sdk() -> None:
    with FakeAnthropic() as api:
        api.on(None, text("writing"), tool_use("write", {"path": "a.txt", "content": "x\n"}))
        client = anthropic.Anthropic(base_url=api.url, api_key="sk-test", max_retries=0)
        with client.messages.stream(model="claude-sonnet-5-5", max_tokens=100,
                                    messages=[{"role": "user", "content": "go"}]) as stream:
            final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"path": "a.txt", "content": "x\n"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert api.messages()[0].body["stream"] is True


def test_unmatched_request_gets_the_fallback_and_errors_are_api_errors() -> None:
    with FakeAnthropic() as api:
        api.on("boom", status=529, error_type="overloaded_error", error_message="too busy")
        client = anthropic.Anthropic(base_url=api.url, api_key="sk-test", max_retries=0)
        msg = client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "other"}])
        assert msg.content[0].type == "text" and api.messages()[0].rule is None
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "boom"}])
    assert info.value.status_code == 529 and "too busy" in str(info.value)
