"""The official OpenAI Python SDK against `cocoon serve`, unchanged.

Usage: python3 openai_sdk_check.py BASE_URL EXPECTED_COST_JSON

The test engine answers with the words of the last user message reversed and
upper-cased, so every answer is known. EXPECTED_COST_JSON maps each prompt to
the charge (nanoTON) the runner must report for it. Exits non-zero, naming the
check, on the first mismatch.
"""

import json
import sys

import openai

MODEL = "cocoon-test-echo"


def answer(prompt: str) -> str:
    return "".join(f"{w.upper()} " for w in reversed(prompt.split()))


def check(what: str, got, want):
    if got != want:
        sys.exit(f"FAILED {what}: expected {want!r}, got {got!r}")
    print(f"ok  {what}")


def main():
    base_url, expected_costs = sys.argv[1], json.loads(sys.argv[2])
    client = openai.OpenAI(base_url=base_url, api_key="unused-by-cocoon", max_retries=0, timeout=60)

    models = [m.id for m in client.models.list()]
    check("models.list", MODEL in models, True)

    prompt = "alpha beta gamma"
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
    check("chat: content", r.choices[0].message.content, answer(prompt))
    check("chat: finish_reason", r.choices[0].finish_reason, "stop")
    check("chat: usage", (r.usage.prompt_tokens, r.usage.completion_tokens), (3, 3))
    check("chat: cost", r.model_extra["cocoon"]["cost_nanoton"], expected_costs[prompt])

    prompt = "one two three four five"
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, cost = [], None, None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
            cost = chunk.model_extra["cocoon"]["cost_nanoton"]
    check("chat stream: content", "".join(pieces), answer(prompt))
    check("chat stream: pieces", len(pieces), 5)
    check("chat stream: usage", (usage.prompt_tokens, usage.completion_tokens), (5, 5))
    check("chat stream: cost", cost, expected_costs[prompt])

    prompt = "red green"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16)
    check("completions: text", r.choices[0].text, answer(prompt))
    check("completions: cost", r.model_extra["cocoon"]["cost_nanoton"], expected_costs[prompt])

    prompt = "stop after two words please"
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=2
    )
    check("chat max_tokens: content", r.choices[0].message.content, "PLEASE WORDS ")
    check("chat max_tokens: finish_reason", r.choices[0].finish_reason, "length")

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        sys.exit("FAILED error case: an unknown model was answered")
    except openai.NotFoundError as e:
        check("error: unknown model is 404", e.status_code, 404)
    try:
        client.chat.completions.create(model=MODEL, messages=[], temperature=0)
        sys.exit("FAILED error case: an empty message list was answered")
    except openai.BadRequestError as e:
        check("error: empty messages is 400", e.status_code, 400)
    print("openai SDK: all checks passed")


if __name__ == "__main__":
    main()
