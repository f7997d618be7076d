import openai


def test_chat_through_gateway_is_recorded(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.admin_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    rid = raw.headers["x-gatewatch-request-id"]
    rec = gateway.record(rid)
    assert rec["model"] == "gpt-4o-mini-2024-07-18"
    assert rec["input_tokens"] == raw.parse().usage.prompt_tokens
