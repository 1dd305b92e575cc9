"""Drives a running Shoal gateway with the official `openai` package, as an application would.

Usage: openai_client.py BASE_URL API_KEY CHAT_MODEL EMBEDDING_MODEL
Exits non-zero (with the failed check) if any answer is not what a user expects.
"""

import math
import sys

import openai

base_url, api_key, chat_model, embed_model = sys.argv[1:5]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


models = {m.id for m in client.models.list().data}
check({chat_model, embed_model} <= models, f"models.list names both deployments ({sorted(models)})")

question = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
r = client.chat.completions.create(model=chat_model, messages=question, temperature=0, max_tokens=32)
answer = r.choices[0].message.content
check("Paris" in answer, f"the greedy answer names Paris: {answer!r}")
check(r.choices[0].finish_reason == "stop", f"finish_reason is stop ({r.choices[0].finish_reason})")
check(r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, f"usage is counted ({r.usage})")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "total_tokens adds up")

chunks = list(
    client.chat.completions.create(
        model=chat_model,
        messages=question,
        temperature=0,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == answer, f"the streamed answer equals the plain one ({streamed!r})")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(finishes == ["stop"], f"one final chunk says stop ({finishes})")
usage = [c.usage for c in chunks if c.usage]
check(len(usage) == 1 and usage[0].completion_tokens == r.usage.completion_tokens, "the stream reports usage")

r = client.chat.completions.create(
    model=chat_model, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
    temperature=0, max_tokens=5,
)
check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5, "max_tokens stops with length")

r = client.completions.create(model=chat_model, prompt="The capital of France is", temperature=0, max_tokens=8)
check(len(r.choices[0].text) > 0 and r.object == "text_completion", f"completions answer ({r.choices[0].text!r})")

seeded = [
    client.chat.completions.create(
        model=chat_model, messages=[{"role": "user", "content": "Name a colour."}],
        temperature=1.0, top_p=0.9, seed=42, max_tokens=12,
    ).choices[0].message.content
    for _ in range(2)
]
check(seeded[0] == seeded[1], f"the same seed gives the same sample ({seeded[0]!r})")

pairs = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
e = client.embeddings.create(model=embed_model, input=pairs)  # the SDK asks for base64 by default
vecs = [d.embedding for d in e.data]
check(len(vecs) == 3 and all(len(v) == 384 for v in vecs), "three 384-dimensional embeddings")
check(all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vecs), "embeddings are unit vectors")


def cos(a, b):
    return sum(x * y for x, y in zip(a, b))


# Reference values from sentence-transformers (all-MiniLM-L6-v2, recorded in docs/serving.md).
near, far = cos(vecs[0], vecs[1]), cos(vecs[0], vecs[2])
check(near > far, f"related sentences are closer ({near:.4f} > {far:.4f})")
check(abs(near - 0.7553) < 1e-3, f"cos(food, bread) matches sentence-transformers 0.7553 ({near:.4f})")
check(abs(far - -0.1050) < 1e-3, f"cos(food, baby) matches sentence-transformers -0.1050 ({far:.4f})")
floats = client.embeddings.create(model=embed_model, input=pairs[0], encoding_format="float").data[0].embedding
check(max(abs(a - b) for a, b in zip(floats, vecs[0])) < 1e-6, "float and base64 encodings agree")
check(e.usage.prompt_tokens > 0, f"embedding usage is counted ({e.usage.prompt_tokens})")

try:
    client.chat.completions.create(model="no-such-model", messages=question)
    check(False, "an unknown model is refused")
except openai.NotFoundError as err:
    check(err.status_code == 404, f"an unknown model is 404 ({err.message})")

try:
    client.chat.completions.create(model=chat_model, messages=question, max_tokens=-5)
    check(False, "negative max_tokens is refused")
except openai.BadRequestError as err:
    check(err.status_code == 400, f"negative max_tokens is 400 ({err.message})")

try:
    openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as err:
    check(err.status_code == 401, "a wrong key is 401")

try:
    client.embeddings.create(model=chat_model, input="hello")
    check(False, "embeddings from a chat model are refused")
except openai.BadRequestError as err:
    check(err.status_code == 400, f"embeddings from a chat model are 400 ({err.message})")

print("all openai SDK checks passed")
