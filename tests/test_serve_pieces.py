"""The server's pieces, each without HTTP: errors, the ASGI guard, request translation, response and stream
assembly, the worker thread, the chat template. tests/test_serve.py drives the whole app with real clients."""

import asyncio

import pytest
import torch

pytest.importorskip("fastapi")

from gptkit import GPT, GPTConfig, Tokenizer  # noqa: E402
from gptkit.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402
from gptkit.generate import Engine, Generation, SamplingParams, TokenEvent, TokenLogprob, complete  # noqa: E402
from gptkit.serve import ServeOptions  # noqa: E402
from gptkit.serve import errors, responses, sse, translate  # noqa: E402
from gptkit.serve.guard import GuardMiddleware  # noqa: E402
from gptkit.serve.schemas import ChatCompletionRequest, CompletionRequest  # noqa: E402
from gptkit.serve.worker import Live, Worker, unpack  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog\nUser: Assistant: System: Be terse. Hi 0123456789"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_char(TEXT)


@pytest.fixture(scope="module")
def served(tok) -> translate.Served:
    return translate.Served(tok, 64, tok.vocab_size, ServeOptions(model_name="m", max_n=4), ChatTemplate.of(tok))


def req(**kw) -> CompletionRequest:
    return CompletionRequest(**{"model": "m", "prompt": "fox", **kw})


# ------------------------------------------------------------------------------------------------ errors
def test_validation_errors_name_the_field():
    e = errors.from_validation([{"loc": ("body", "temperature"), "msg": "too big", "type": "less_than_equal"}])
    assert (e.status, e.param, e.message) == (400, "temperature", "temperature: too big")
    assert errors.from_validation([{"loc": ("body", 3), "type": "json_invalid", "msg": "x"}]).message == \
        "the request body is not valid JSON"
    assert "missing" in errors.from_validation([{"loc": ("body",), "type": "missing", "msg": "x"}]).message
    assert errors.from_validation([]).status == 400
    body = errors.from_http(404, "Not Found").body()["error"]
    assert body == {"message": "Not Found", "type": "not_found_error", "param": None, "code": None}
    assert errors.from_http(405, "Method Not Allowed").type == "invalid_request_error"
    assert errors.internal() is not errors.internal() and errors.internal().status == 500


# ------------------------------------------------------------------------------------------------ guard
def run_guard(guard, path="/v1/completions", method="POST", headers=(), chunks=(b"{}",)):
    """Call the ASGI guard with a request; return (status answered or None, body the app got or None)."""
    got: dict = {}

    async def app(scope, receive, send):
        got["body"] = (await receive())["body"]

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            got["status"] = message["status"]

    scope = {"type": "http", "path": path, "method": method, "headers": list(headers)}
    asyncio.run(GuardMiddleware(app, *guard)(scope, receive, send))
    return got.get("status"), got.get("body")


def test_guard_checks_the_key_only_on_the_api():
    assert run_guard(("k", 100)) == (401, None)
    assert run_guard(("k", 100), headers=[(b"authorization", b"Bearer nope")]) == (401, None)
    assert run_guard(("k", 100), headers=[(b"authorization", b"Bearer k")]) == (None, b"{}")
    assert run_guard(("k", 100), path="/health", method="GET") == (None, b"{}")


def test_guard_limits_the_body_declared_or_streamed():
    assert run_guard((None, 10), headers=[(b"content-length", b"11")]) == (413, None)
    assert run_guard((None, 10), headers=[(b"content-length", b"x")]) == (400, None)
    assert run_guard((None, 10), chunks=(b"123456", b"789012")) == (413, None)  # no Content-Length: counted
    assert run_guard((None, 12), chunks=(b"123456", b"789012")) == (None, b"123456789012")  # joined, replayed


# ------------------------------------------------------------------------------------------------ translate
def test_prompts_of_every_shape(served, tok):
    assert translate.prompts_of(req(prompt="fox"), served) == [tok.encode("fox")]
    assert translate.prompts_of(req(prompt=["a", "do"]), served) == [tok.encode("a"), tok.encode("do")]
    assert translate.prompts_of(req(prompt=[1, 2]), served) == [[1, 2]]
    assert translate.prompts_of(req(prompt=[[1], [2, 3]]), served) == [[1], [2, 3]]
    assert translate.prompts_of(req(prompt=""), served) == [[tok.eot_id]]  # a new document
    for bad in ([], [[]], [tok.vocab_size], "é"):
        with pytest.raises(errors.APIError) as e:
            translate.prompts_of(req(prompt=bad), served)
        assert e.value.status == 400 and e.value.param == "prompt"


def test_completion_params(served, tok):
    p = translate.completion_params(req(max_tokens=5, top_p=1.0, stop="x", seed=10, temperature=0.5), served, 3, 2)
    assert p == SamplingParams(max_new_tokens=5, temperature=0.5, top_p=None, stop=("x",),
                               stop_token_ids=(tok.eot_id,), seed=12)  # seed + choice: choices differ
    assert translate.completion_params(req(logprobs=2, echo=True), served, 3, 0).prompt_logprobs
    with pytest.raises(errors.APIError) as e:
        translate.completion_params(req(max_tokens=10), served, 55, 0)
    assert e.value.code == "context_length_exceeded" and "65" in e.value.message
    for stop in ("", ["a"] * 17):
        with pytest.raises(errors.APIError, match="stop"):
            translate.completion_params(req(stop=stop), served, 3, 0)


@pytest.mark.parametrize("kw, status, param", [
    ({"model": "other"}, 404, "model"), ({"suffix": "x"}, 400, "suffix"), ({"best_of": 2}, 400, "best_of"),
    ({"logit_bias": {"1": 1.0}}, 400, "logit_bias"), ({"seed": 2 ** 63 - 2}, 400, "seed")])
def test_check_completion_refuses(served, kw, status, param):
    with pytest.raises(errors.APIError) as e:
        translate.check_completion(req(**kw), served)
    assert (e.value.status, e.value.param) == (status, param)


# ------------------------------------------------------------------------------------------------ assembly
def finished(tok, prompt: str, text: str, choice=0) -> Generation:
    g = Generation(tok.encode(prompt), SamplingParams(), tag=(None, choice))
    g.tokens = tok.encode(text)
    g.text, g.finish_reason = text, "length"
    g.logprobs = [TokenLogprob(t, -0.5, ((t, -0.5), (0, -1.5))) for t in g.tokens]
    g.prompt_logprobs = [None] + [TokenLogprob(t, -2.0) for t in g.prompt[1:]]
    return g


def test_completion_body(tok):
    gens = [finished(tok, "ab", "cd", 1), finished(tok, "ab", "ef", 0)]
    body = responses.completion({"id": "x"}, gens, tok, echo=True, logprobs=True, prompt_tokens=2)
    assert [c["text"] for c in body["choices"]] == ["abef", "abcd"]  # choice order
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == list("abef") and lp["text_offset"] == [0, 1, 2, 3]
    assert lp["token_logprobs"] == [None, -2.0, -0.5, -0.5] and lp["top_logprobs"][2] == {"e": -0.5, tok.decode([0]): -1.5}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


class FakeWorker:
    in_flight = 0


def collect(agen) -> list[str]:
    async def run():
        return [x async for x in agen]
    return asyncio.run(run())


def queue_of(items) -> asyncio.Queue:
    q: asyncio.Queue = asyncio.Queue()
    for x in items:
        q.put_nowait(x)
    return q


def test_completion_stream_chunks(tok):
    g = finished(tok, "ab", "cd")
    g.finish_reason = None
    w = FakeWorker()
    w.in_flight = 1
    events = [TokenEvent(g, g.tokens[0], "c", g.logprobs[0]), TokenEvent(g, g.tokens[1], "d", g.logprobs[1], True)]
    g.finish_reason = "length"
    out = collect(sse.completion_stream(tok, queue_of(events), Live([g], w), [g], {"id": "x"}, echo=True,
                                        logprobs=True, include_usage=True, prompt_tokens=2))
    assert out[-1] == sse.DONE and all(x.startswith("data: {") for x in out[:-1])
    import json
    chunks = [json.loads(x[6:]) for x in out[:-1]]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["ab", "c", "d"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "length"]
    assert chunks[2]["choices"][0]["logprobs"]["text_offset"] == [3]  # after the echoed prompt and "c"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    assert w.in_flight == 0


def test_a_worker_error_ends_the_stream_with_one_error_chunk(tok):
    g = finished(tok, "ab", "")
    w = FakeWorker()
    w.in_flight = 1
    out = collect(sse.completion_stream(tok, queue_of([(g, RuntimeError("bug"))]), Live([g], w), [g], {},
                                        echo=False, logprobs=False, include_usage=False, prompt_tokens=2))
    assert len(out) == 1 and '"server_error"' in out[0] and "bug" not in out[0] and w.in_flight == 0
    with pytest.raises(errors.APIError) as e:
        unpack((g, translate.APIError(400, "x")), Live([g], w))
    assert e.value.status == 500  # only GptkitErrors are the client's fault


# ------------------------------------------------------------------------------------------------ the worker
def test_worker_decodes_what_the_python_api_does_and_stops(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    want = complete(model, [tok.encode("fox")], params)[0].tokens

    async def run():
        q: asyncio.Queue = asyncio.Queue()
        worker = Worker(lambda: Engine(model, tok, max_batch=2), asyncio.get_running_loop())
        worker.start()
        gen = Generation(tok.encode("fox"), params, tag=(q, 0))
        worker.submit([gen])
        live = Live([gen], worker)
        while live:
            unpack(await q.get(), live)
        alive = worker.thread.is_alive()
        worker.stop()
        return gen.tokens, alive, worker

    tokens, alive, worker = asyncio.run(run())
    assert tokens == want and alive and worker.in_flight == 0 and worker.stats["finished"] == 1
    assert not worker.thread.is_alive()  # stop() joined it


# ------------------------------------------------------------------------------------------ chat template
MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


def test_plain_transcript():
    t = ChatTemplate()
    assert t.render(MESSAGES) == "System: Be terse.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert t.render(MESSAGES[:2], add_generation_prompt=False) == "System: Be terse.\nUser: Hi\n"
    assert t.stop == ("\nUser:",)
    with pytest.raises(ChatTemplateError, match="role"):
        t.render([{"role": "tool", "content": "x"}])


def test_jinja_template_in_hugging_face_convention():
    src = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
           "{{ raise_exception('system first') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    t = ChatTemplate(src, "<s>", "</s>")
    assert t.render(MESSAGES[1:3]) == "<s><user> Hi </s><assistant>Hello.</s><assistant>"
    assert t.stop == ()
    with pytest.raises(ChatTemplateError, match="system first"):
        t.render(MESSAGES[1:] + MESSAGES[:1])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__ }}{% for x in %}").render(MESSAGES)
    sandboxed = ChatTemplate("{{ messages.append(1) }}")  # the sandbox forbids changing what it is given
    with pytest.raises(ChatTemplateError):
        sandboxed.render(MESSAGES)


# ------------------------------------------------------------------------------------------------ chat
def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"model": "m", "messages": MESSAGES[:2], **kw})


def test_chat_prompt_and_params(served, tok):
    prompt = translate.chat_prompt(chat(), served)
    assert tok.decode(prompt) == "System: Be terse.\nUser: Hi\nAssistant:"
    p = translate.chat_params(chat(), served, len(prompt), 0)
    assert p.max_new_tokens == 64 - len(prompt) and p.stop == ("\nUser:",) and p.logprobs is None
    assert translate.chat_params(chat(stop=[]), served, 5, 0).stop == ()  # no stop at all
    assert translate.chat_params(chat(stop="x"), served, 5, 0).stop == ("x",)
    assert translate.chat_params(chat(max_tokens=3, max_completion_tokens=7), served, 5, 0).max_new_tokens == 7
    assert translate.chat_params(chat(logprobs=True), served, 5, 0).logprobs == 0
    assert translate.chat_params(chat(logprobs=True, top_logprobs=4, seed=1), served, 5, 2).logprobs == 4
    with pytest.raises(errors.APIError) as e:
        translate.chat_params(chat(max_completion_tokens=60), served, 5, 0)
    assert e.value.param == "max_completion_tokens" and e.value.code == "context_length_exceeded"
    with pytest.raises(errors.APIError) as e:
        translate.chat_params(chat(), served, 64, 0)  # no room left for a reply
    assert e.value.code == "context_length_exceeded"
    parts = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert translate.chat_messages(parts) == [{"role": "user", "content": "ab"}]


@pytest.mark.parametrize("kw, param", [
    ({"tools": [{"type": "function"}]}, "tools"), ({"tool_choice": "auto"}, "tool_choice"),
    ({"audio": {"voice": "x"}}, "audio"), ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"modalities": ["audio"]}, "modalities"), ({"top_logprobs": 1}, "top_logprobs"),
    ({"model": "x"}, "model")])
def test_check_chat_refuses(served, kw, param):
    with pytest.raises(errors.APIError) as e:
        translate.check_chat(chat(**kw), served)
    assert e.value.param == param and e.value.status in (400, 404)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "tool", "content": "1"}], [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]])
def test_chat_messages_refuse_what_is_not_text(messages):
    with pytest.raises(errors.APIError) as e:
        translate.chat_messages(chat(messages=messages))
    assert e.value.param == "messages" and "messages[0]" in e.value.message


def test_chat_body_and_logprobs_cut_at_the_stop(tok):
    g = finished(tok, "ab", "cd")
    g.text = "c"  # "d" was (the start of) a stop sequence: its token is left out of the logprobs too
    body = responses.chat_completion({"id": "x"}, [g], tok, logprobs=True, prompt_tokens=2)
    ch = body["choices"][0]
    assert ch["message"] == {"role": "assistant", "content": "c"} and ch["finish_reason"] == "length"
    assert [x["token"] for x in ch["logprobs"]["content"]] == ["c"]
    assert ch["logprobs"]["content"][0]["top_logprobs"][0] == {"token": "c", "logprob": -0.5, "bytes": [99]}
    assert body["usage"]["completion_tokens"] == 2


def test_chat_stream_chunks(tok):
    import json

    g = finished(tok, "ab", "cd")
    w = FakeWorker()
    w.in_flight = 1
    events = [TokenEvent(g, g.tokens[0], "c", g.logprobs[0]), TokenEvent(g, g.tokens[1], "d", g.logprobs[1], True)]
    out = collect(sse.chat_stream(tok, queue_of(events), Live([g], w), [g], {"id": "x"}, logprobs=True,
                                  include_usage=True, prompt_tokens=2))
    chunks = [json.loads(x[6:]) for x in out[:-1]]
    assert out[-1] == sse.DONE
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [{"role": "assistant", "content": ""},
                                                               {"content": "c"}, {"content": "d"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "length"]
    assert chunks[1]["choices"][0]["logprobs"]["content"][0]["token"] == "c"
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["total_tokens"] == 4


@pytest.mark.parametrize("path, name", [
    ("runs/shakespeare", "shakespeare"), ("runs/shakespeare/", "shakespeare"), ("runs/quickstart/run", "quickstart"),
    ("runs/x/checkpoints/step-00000500", "x"), ("runs/x/checkpoints", "x"), ("hf/gpt2", "gpt2"),
    ("/models/gpt2-medium/hf", "gpt2-medium")])
def test_model_name_of_a_checkpoint_path(path, name):
    from gptkit.serve.config import model_name_of

    assert model_name_of(path) == name
