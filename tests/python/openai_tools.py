"""Tool calling and structured output through the official `openai` package, as an agent
developer would use them against a Shoal gateway.

Usage: openai_tools.py BASE_URL API_KEY CHAT_MODEL
Exits non-zero (with the failed check) if any answer is not what a user expects.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai

base_url, api_key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
FLIGHT_PARAMS = {
    "type": "object",
    "properties": {
        "origin": {"type": "string"},
        "destination": {"type": "string"},
        "passengers": {"type": "integer"},
        "cabin": {"type": "string", "enum": ["economy", "business", "first"]},
        "dates": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "flexible": {"type": ["boolean", "null"]},
    },
    "required": ["origin", "destination", "passengers", "cabin", "dates", "flexible"],
    "additionalProperties": False,
}
FLIGHT = {
    "type": "function",
    "function": {
        "name": "book_flight",
        "description": "Book a flight.",
        "strict": True,
        "parameters": FLIGHT_PARAMS,
    },
}
TOOLS = [WEATHER, FLIGHT]
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "book_flight": FLIGHT_PARAMS}


def valid_call(call):
    """Whether a call names a known tool and its arguments parse and validate."""
    try:
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        return bool(call.id) and call.type == "function"
    except (ValueError, KeyError, jsonschema.ValidationError):
        return False


def streamed(**kw):
    """Streams a chat; returns (content, calls as [(id, name, arguments)], finish_reason)."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        content += c.delta.content or ""
        for d in c.delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                check(entry["id"] is None, "a call's id comes once, in its first delta")
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] = d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
        finish = c.finish_reason or finish
    return content, [(v["id"], v["name"], v["arguments"]) for _, v in sorted(calls.items())], finish


# --- a two-turn tool loop, as an agent runs it -------------------------------------------
question = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
r = client.chat.completions.create(model=model, messages=question, tools=TOOLS, temperature=0, max_tokens=128)
msg = r.choices[0].message
check(r.choices[0].finish_reason == "tool_calls", f"the model calls a tool (finish {r.choices[0].finish_reason}, {msg})")
check(len(msg.tool_calls) >= 1 and msg.tool_calls[0].function.name == "get_weather", f"it calls get_weather ({msg.tool_calls})")
call = msg.tool_calls[0]
check(call.id.startswith("call_") and len(call.id) > 5, f"the call has an id ({call.id})")
check(json.loads(call.function.arguments).get("city", "").lower().startswith("paris"), f"for Paris ({call.function.arguments})")
check(not (msg.content or "").count("<tool_call>"), "the call is not left in content")

content, calls, finish = streamed(model=model, messages=question, tools=TOOLS, temperature=0, max_tokens=128)
check(finish == "tool_calls", f"streaming also ends with tool_calls ({finish})")
check(
    [(n, a) for _, n, a in calls] == [(c.function.name, c.function.arguments) for c in msg.tool_calls],
    f"streaming gives the same calls ({calls})",
)
check(all(i and i.startswith("call_") for i, _, _ in calls), "streamed calls have ids")

loop = question + [
    {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in msg.tool_calls]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
]
r2 = client.chat.completions.create(model=model, messages=loop, tools=TOOLS, temperature=0, max_tokens=96)
answer = r2.choices[0].message.content or ""
check(r2.choices[0].finish_reason == "stop" and "18" in answer, f"the second turn answers from the tool's result ({answer!r})")
content, calls, finish = streamed(model=model, messages=loop, tools=TOOLS, temperature=0, max_tokens=96)
check(content == answer and not calls and finish == "stop", f"and so does the streamed second turn ({content!r})")

# --- none: no calls ------------------------------------------------------------------------
r = client.chat.completions.create(
    model=model, messages=question, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=48
)
check(not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ("stop", "length"), "tool_choice none gives no calls")
check("<tool_call>" not in (r.choices[0].message.content or ""), "nor a call written as text")

# --- required and named: always schema-valid -----------------------------------------------
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Hanoi", "Quito", "Perth", "Cairo", "Dublin"]
PROMPTS = []
for i in range(25):
    a, b = CITIES[i % 10], CITIES[(i * 3 + 1) % 10]
    PROMPTS.append(f"I need {i % 4 + 1} seats from {a} to {b} on day {i + 1}, {['cheap', 'comfortable', 'luxurious'][i % 3]} please.")
    PROMPTS.append(f"{['Hey', 'Quick one', 'Please help'][i % 3]}: is it {['raining', 'cold', 'windy', 'hot'][i % 4]} in {b}?")


def forced(i_prompt):
    i, prompt = i_prompt
    choice = "required" if i % 2 == 0 else {"type": "function", "function": {"name": ["book_flight", "get_weather"][i % 4 // 2]}}
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], tools=TOOLS, tool_choice=choice,
        temperature=0.8, seed=i, max_tokens=160,
    )
    c = r.choices[0]
    named = choice["function"]["name"] if isinstance(choice, dict) else None
    ok = (
        c.finish_reason == "tool_calls"
        and len(c.message.tool_calls or []) == 1
        and valid_call(c.message.tool_calls[0])
        and (named is None or c.message.tool_calls[0].function.name == named)
    )
    return ok, prompt, choice, c


with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(forced, enumerate(PROMPTS)))
bad = [(p, ch, c.finish_reason, c.message) for ok, p, ch, c in results if not ok]
check(len(PROMPTS) == 50 and not bad, f"required and named choices: 50 prompts, {len(bad)} invalid calls {bad[:2]}")

# --- structured output ---------------------------------------------------------------------
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "languages": {"type": "array", "items": {"type": "string"}},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "languages", "employed"],
    "additionalProperties": False,
}
people = ["Ada, 36, speaks English and French, works as an engineer.", "Kenji is 19, a student who speaks Japanese.",
          "Maria (52) speaks Spanish, Portuguese and Italian; she is retired.", "Tom, aged 41, unemployed, speaks German."]
for text in people:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Extract the person as JSON: {text}"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        temperature=0, max_tokens=128,
    )
    out = r.choices[0].message.content
    try:
        jsonschema.validate(json.loads(out), PERSON)
        valid = True
    except (ValueError, jsonschema.ValidationError):
        valid = False
    check(valid and r.choices[0].finish_reason == "stop", f"json_schema output validates ({out!r})")
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
    response_format={"type": "json_object"}, temperature=0, max_tokens=96,
)
check(isinstance(json.loads(r.choices[0].message.content), dict), f"json_object output is an object ({r.choices[0].message.content!r})")

# --- mistakes are 400s naming what is wrong ---------------------------------------------------
for what, kw, needle in [
    ("a named function that is not a tool", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "launch"),
    ("an unsupported strict schema feature", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True,
        "schema": {"type": "object", "properties": {"d": {"type": "string", "pattern": "^a"}}}}}}, "pattern"),
]:
    try:
        client.chat.completions.create(model=model, messages=question, max_tokens=8, **kw)
        check(False, f"{what} is refused")
    except openai.BadRequestError as err:
        check(err.status_code == 400 and needle in err.message, f"{what} is a 400 naming it ({err.message})")

print("all tool-calling checks passed")
