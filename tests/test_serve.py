"""The OpenAI-compatible server, driven over loopback by the official `openai` client (and raw httpx for what
a well-behaved client never sends).

Servers run inside the tests: uvicorn in a thread on 127.0.0.1 with a free port (BackgroundServer), plus one
`gptkit serve` subprocess for the command line. The oracle for the text is the Python API on the same model:
the HTTP layer must return exactly what the generation core computes, batched or not.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from gptkit import GPT, GPTConfig, Tokenizer  # noqa: E402
from gptkit.generate import SamplingParams, complete  # noqa: E402
from gptkit.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog; ROMEO: o Juliet, wherefore art thou? 0123456789\n"
KEY = "sekret-key"


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model(TEXT)


def tiny_model(text: str) -> GPT:
    """A random GPT over the characters of `text`, readied for decoding as `gptkit serve` readies it."""
    tok = Tokenizer.train_char(text)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # larger weights than the init: less uniform distributions, more varied text
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
        m.transformer.wte.weight[tok.eot_id] = 0  # <|endoftext|> gets logit 0: greedy runs never stop early
    m.tokenizer = tok
    from gptkit.generate import prepare_for_inference

    return prepare_for_inference(m)  # as `gptkit serve` runs it (numpy's BLAS); the Python-API oracles share it


@pytest.fixture(scope="module")
def server(model):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared machine
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny", max_batch=8, max_queue=32))
    with BackgroundServer(app) as url:
        yield url
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def strict_server(model):
    """A key, a small body limit, one row and no queue: for 401, 413 and 429."""
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny", api_key=KEY, max_batch=1,
                                                          max_queue=0, max_body_bytes=4096))
    with BackgroundServer(app) as url:
        yield url


def oracle(model, prompt: str, **kw) -> str:
    """What the generation core gives for this prompt (the server also stops at <|endoftext|>)."""
    params = SamplingParams(stop_token_ids=(model.tokenizer.eot_id,), **kw)
    return complete(model, [prompt], params, tokenizer=model.tokenizer)[0].text


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    return body["error"]


# -------------------------------------------------------------------------------------------- the basics
def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = health(server)
    assert h["status"] == "ok" and h["model"] == "tiny"


def test_plain_completion_equals_the_python_api(client, model):
    r = client.completions.create(model="tiny", prompt="ROMEO: ", max_tokens=40, temperature=0)
    ch = r.choices[0]
    assert ch.text == oracle(model, "ROMEO: ", max_new_tokens=40, temperature=0.0)
    assert len(ch.text) > 10 and len(set(ch.text)) > 5
    assert ch.finish_reason in ("length", "stop") and ch.index == 0
    assert r.usage.prompt_tokens == len("ROMEO: ") and r.usage.completion_tokens <= 40
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")


def test_streamed_completion_joins_to_the_plain_one(client, model):
    chunks = list(client.completions.create(model="tiny", prompt="o Juliet", max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 5  # really streamed, piece by piece
    assert "".join(texts) == oracle(model, "o Juliet", max_new_tokens=30, temperature=0.0)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0] in ("length", "stop")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 30


def test_n_choices_and_seed_reproducibility(client, server):
    def ask(seed):
        r = client.completions.create(model="tiny", prompt="the ", max_tokens=25, n=3, temperature=1.0,
                                      seed=seed)
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    a = ask(7)
    assert len(a) == 3 and len(set(a)) == 3  # n samples, each its own
    # the same seed gives the same choices, also while other requests share the batch
    with ThreadPoolExecutor(6) as pool:
        noise = [pool.submit(client.completions.create, model="tiny", prompt="x" * i, max_tokens=20)
                 for i in range(1, 5)]
        again = [pool.submit(ask, 7) for _ in range(2)]
        assert [f.result() for f in again] == [a, a]
        for f in noise:
            f.result()
    assert ask(8) != a


def test_stop_sequences(client, model):
    free = oracle(model, "ROMEO: ", max_new_tokens=40, temperature=0.0)
    stop = free[12:15]
    want = free[:free.find(stop)]
    r = client.completions.create(model="tiny", prompt="ROMEO: ", max_tokens=40, temperature=0,
                                  stop=[stop, "not-in-it"])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="ROMEO: ", max_tokens=40, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want


def test_list_prompts_token_prompts_and_choice_order(client, model):
    tok = model.tokenizer
    r = client.completions.create(model="tiny", prompt=["abc", "fox"], max_tokens=5, n=2, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == oracle(model, "abc", max_new_tokens=5, temperature=0.0)
    assert r.choices[2].text == oracle(model, "fox", max_new_tokens=5, temperature=0.0)
    ids = client.completions.create(model="tiny", prompt=tok.encode("fox"), max_tokens=5, temperature=0)
    assert ids.choices[0].text == r.choices[2].text
    empty = client.completions.create(model="tiny", prompt="", max_tokens=3, temperature=0)
    assert empty.usage.prompt_tokens == 1  # an empty prompt starts from <|endoftext|>


def test_logprobs_and_echo(client, model):
    tok = model.tokenizer
    r = client.completions.create(model="tiny", prompt="dog", max_tokens=4, temperature=0, logprobs=2, echo=True)
    ch = r.choices[0]
    assert ch.text.startswith("dog")
    lp = ch.logprobs
    assert lp.tokens[:3] == ["d", "o", "g"] and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == len(ch.text) and lp.text_offset == list(range(len(ch.text)))
    ref = complete(model, [tok.encode("dog")], SamplingParams(max_new_tokens=4, temperature=0.0, logprobs=2,
                                                               prompt_logprobs=True))[0]
    want = [x.logprob for x in ref.prompt_logprobs[1:]] + [x.logprob for x in ref.logprobs]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-5)
    for top, chosen in zip(lp.top_logprobs[3:], lp.token_logprobs[3:]):
        assert len(top) == 2 and max(top.values()) == pytest.approx(chosen, abs=1e-6)  # greedy: the best one
    # scoring only: echo + max_tokens 0
    s = client.completions.create(model="tiny", prompt="dog", max_tokens=0, logprobs=0, echo=True)
    assert s.choices[0].text == "dog" and s.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want[:2], abs=1e-5)
    # streamed, with logprobs for each token
    chunks = list(client.completions.create(model="tiny", prompt="dog", max_tokens=4, temperature=0, logprobs=1,
                                            stream=True))
    per_token = [x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert per_token == pytest.approx(want[2:], abs=1e-5)


def test_concurrent_requests_are_batched_and_stay_correct(client, server, model):
    prompts = [f"{w} " for w in TEXT.split()[:8]]
    before = health(server)["max_running"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=60,
                                                                    temperature=0).choices[0].text, prompts))
    for p, text in zip(prompts, results):
        assert text == oracle(model, p, max_new_tokens=60, temperature=0.0)
    assert max(before, health(server)["max_running"]) >= 2  # rows really were decoded together


# ------------------------------------------------------------------------------------------------ errors
def post(url: str, body, headers=None, **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}/v1/completions", content=data,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=30, **kw)


def test_context_overflow_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="a" * 500, max_tokens=20)
    err = e.value.body
    assert err["code"] == "context_length_exceeded" and "512" in err["message"] and "520" in err["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "prompt": "a", "temperature": -1}, "temperature"),
    ({"model": "tiny", "prompt": "a", "top_p": 0}, "top_p"),
    ({"model": "tiny", "prompt": "a", "n": 0}, "n"),
    ({"model": "tiny", "prompt": "a", "n": 40}, "n"),
    ({"model": "tiny", "prompt": "a", "max_tokens": -5}, "max_tokens"),
    ({"model": "tiny", "prompt": "a", "logprobs": 50}, "logprobs"),
    ({"model": "tiny", "prompt": "a", "stop": ""}, "stop"),
    ({"model": "tiny", "prompt": "a", "presence_penalty": 9}, "presence_penalty"),
    ({"model": "tiny", "prompt": "a", "seed": 2 ** 70}, "seed"),
    ({"model": "tiny", "prompt": [10 ** 9]}, "prompt"),
    ({"model": "tiny", "prompt": [-1]}, "prompt"),
    ({"model": "tiny", "prompt": []}, "prompt"),
    ({"model": "tiny", "prompt": [[]]}, "prompt"),
    ({"model": "tiny", "prompt": 12}, "prompt"),
    ({"model": "tiny", "prompt": {"a": 1}}, "prompt"),
    ({"model": "tiny"}, "prompt"),
    ({"prompt": "a"}, "model"),
    ({"model": "tiny", "prompt": "a", "suffix": "b"}, "suffix"),
    ({"model": "tiny", "prompt": "a", "logit_bias": {"3": 5}}, "logit_bias"),
    ({"model": "tiny", "prompt": "a", "best_of": 3}, "best_of"),
    ({"model": "tiny", "prompt": "a", "max_tokens": "many"}, "max_tokens"),
    ({"model": "tiny", "prompt": "a", "temperature": float("nan")}, None),
])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    r = post(server, json.dumps(body))
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param or param in err["message"], err


@pytest.mark.parametrize("route, extra, message", [
    ("completions", {"temperature": float("nan")}, "temperature: Input should be a finite number"),
    ("completions", {"top_p": float("inf")}, "top_p: Input should be a finite number"),
    ("completions", {"prompt": [True, False]}, "prompt: must be text, a list of texts, a list of token ids"),
    ("completions", {"prompt": [1.5]}, "prompt: must be text, a list of texts, a list of token ids"),
    ("completions", {"stop": [5]}, "stop: must be a string or a list of strings"),
    ("completions", {"n": True}, "n: Input should be a valid integer"),
    ("completions", {"max_tokens": 1e20}, "max_tokens: Input should be a valid integer"),
    ("completions", {"stream": "yes"}, "stream: Input should be a valid boolean"),
    ("completions", {"stream": True, "stream_options": {"include_usage": "no"}},
     "stream_options.include_usage: Input should be a valid boolean"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"text": "a"}]}]},
     "messages.0.content: must be a string, a list of text parts or null")])
def test_a_mistyped_field_is_a_400_that_says_what_it_must_be(server, route, extra, message):
    """pydantic's lax mode took `"n": true` as 1 and [true, false] as token ids; NaN was 'less than or equal to
    2'; a field of several shapes was judged against its first ('prompt.str: Input should be a valid string')."""
    body = {"model": "tiny", "prompt": "a", "max_tokens": 2} if route == "completions" else \
        {"model": "tiny", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2}
    r = httpx.post(f"{server}/v1/{route}", content=json.dumps({**body, **extra}),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert error_of(r)["message"].startswith(message), r.text


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_a_body_that_is_not_a_json_object_says_so(server, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(f"{server}/v1/completions", content=json.dumps({"model": "tiny", "prompt": "a"}),
                   headers=headers, timeout=30)
    assert r.status_code == 400 and error_of(r)["message"] == ("the request body must be a JSON object, sent with "
                                                               "Content-Type: application/json"), r.text


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[1, 2]", b"null", b'"prompt"', b"\xff\xfe",
                                 b'{"model": "tiny", "prompt": "a", "stream": "maybe"}'])
def test_malformed_bodies_are_400s_never_500s(server, raw):
    r = post(server, raw)
    assert r.status_code == 400, r.text
    error_of(r)


def test_unknown_model_route_and_method(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="a", max_tokens=1)
    assert e.value.body["code"] == "model_not_found" and "tiny" in e.value.body["message"]
    assert httpx.get(f"{server}/v1/nothing").status_code == 404
    r = httpx.get(f"{server}/v1/completions")
    assert r.status_code == 405 and error_of(r)


def test_api_key(strict_server):
    bad = openai.OpenAI(base_url=f"{strict_server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny", prompt="a", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = post(strict_server, {"model": "tiny", "prompt": "a"})  # no key at all
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    r = post(strict_server, b"{broken", headers={"authorization": "Bearer nope"})
    assert r.status_code == 401  # the key is checked before the body is even parsed
    good = openai.OpenAI(base_url=f"{strict_server}/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model="tiny", prompt="a", max_tokens=2).choices[0].text is not None
    assert httpx.get(f"{strict_server}/health").status_code == 200  # health needs no key


def test_oversized_body_is_413(strict_server):
    good = openai.OpenAI(base_url=f"{strict_server}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        good.completions.create(model="tiny", prompt="a" * 100_000, max_tokens=1)
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    auth = {"authorization": f"Bearer {KEY}"}
    r = post(strict_server, b'{"model": "tiny", "prompt": "' + b"a" * 5000 + b'"}', headers=auth)
    assert r.status_code == 413
    # a chunked upload (no Content-Length) is measured as it arrives
    r = httpx.post(f"{strict_server}/v1/completions", content=iter([b'{"prompt": "' + b"a" * 3000, b"a" * 3000 + b'"}']),
                   headers={"content-type": "application/json", **auth})
    assert r.status_code == 413 and error_of(r)


def test_queue_full_is_429_and_a_dropped_stream_frees_its_row(strict_server):
    """One row, no queue: a running stream holds the row, so the next request gets 429; once the streaming
    client disconnects, its row is freed and requests are served again."""
    auth = {"authorization": f"Bearer {KEY}"}
    good = openai.OpenAI(base_url=f"{strict_server}/v1", api_key=KEY, max_retries=0)
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", f"{strict_server}/v1/completions", headers=auth,
                      json={"model": "tiny", "prompt": "a", "max_tokens": 500, "stream": True,
                            "temperature": 0}) as resp:  # greedy: it cannot stop early on <|endoftext|>
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # generating now
            with pytest.raises(openai.RateLimitError) as e:
                good.completions.create(model="tiny", prompt="b", max_tokens=1)
            assert e.value.body["code"] == "server_busy"
        # the response is closed here: the client went away mid-stream
    deadline = time.monotonic() + 10
    while (h := health(strict_server))["running"] or h["in_flight"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
    assert h["cancelled"] >= 1  # freed by cancellation, not by running to the end
    assert good.completions.create(model="tiny", prompt="b", max_tokens=3).choices[0].finish_reason
    # more generations than rows and queue together could ever hold: 400 at once, not a 429 to retry for ever
    with pytest.raises(openai.BadRequestError) as e:
        good.completions.create(model="tiny", prompt="b", max_tokens=1, n=2)
    assert "at most 1 per request" in e.value.body["message"]


def test_disconnect_mid_stream_frees_the_row(server):
    before = health(server)["cancelled"]
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", f"{server}/v1/completions",
                      json={"model": "tiny", "prompt": "a", "max_tokens": 500, "stream": True, "n": 2,
                            "temperature": 0}) as resp:  # greedy: no row can stop early on <|endoftext|>
            got = 0
            for line in resp.iter_lines():
                got += line.startswith("data:")
                if got == 3:
                    break
    deadline = time.monotonic() + 10
    while (hh := health(server))["running"] or hh["in_flight"]:
        assert time.monotonic() < deadline, hh
        time.sleep(0.05)
    assert hh["cancelled"] >= before + 2


def test_streamed_echo_starts_with_the_prompt_and_joins_to_the_plain_echo(client, model):
    """With echo, each choice's stream opens with its prompt text; joined, it is the non-streamed echo."""
    kw = dict(model="tiny", prompt=["o Juliet", "fox"], max_tokens=20, n=2, temperature=0, echo=True)
    plain = {c.index: c.text for c in client.completions.create(**kw).choices}
    by_choice: dict[int, list[str]] = {}
    for c in client.completions.create(**kw, stream=True):
        by_choice.setdefault(c.choices[0].index, []).append(c.choices[0].text)
    assert sorted(by_choice) == [0, 1, 2, 3]
    for i, texts in by_choice.items():
        prompt = kw["prompt"][i // 2]
        assert texts[0] == prompt and len(texts) > 5  # the prompt first, then the completion piece by piece
        assert "".join(texts) == plain[i] == prompt + oracle(model, prompt, max_new_tokens=20, temperature=0.0)
    # scoring only (max_tokens 0): the stream is the prompt, then the end
    chunks = list(client.completions.create(model="tiny", prompt="dog", max_tokens=0, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "dog" and chunks[0].choices[0].text == "dog"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"


def test_disconnect_while_waiting_for_a_plain_completion_frees_the_row(model):
    """A non-streamed request whose client gives up (here: times out) mid-generation has its generation
    cancelled within about a second, although the engine reports a token every step."""
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny"))
    with BackgroundServer(app) as url:
        worker = app.state.worker
        step = worker.engine.step

        def slow_step():  # 500 tokens now take more than 10 s
            time.sleep(0.02)
            return step()

        worker.engine.step = slow_step
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 500,
                                                      "temperature": 0}, timeout=1.0)
        deadline = time.monotonic() + 5
        # the engine frees the row inside its step and counts it just after: wait for the count too
        while (h := health(url))["running"] or h["in_flight"] or not h["cancelled"] + h["finished"]:
            assert time.monotonic() < deadline, h
            time.sleep(0.05)
        assert h["cancelled"] == 1 and h["finished"] == 0  # freed by cancellation, not by running to the end


# ------------------------------------------------------------------------------------------ command line
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gptkit_serve_command(model, tmp_path):
    ckpt = tmp_path / "runs" / "tinyfox" / "checkpoints" / "step-00000010"
    model.save_pretrained(ckpt)
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    port = free_port()
    env = {**os.environ, "GPTKIT_API_KEY": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--ckpt", str(ckpt), "--port", str(port),
                             "--threads", "1", "--no-docs", "--chat-template", str(tmp_path / "t.jinja")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.json()["model"] == "tinyfox"  # the run's name, by default
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert c.completions.create(model="tinyfox", prompt="fox", max_tokens=5, temperature=0).choices[0].text == \
            oracle(model, "fox", max_new_tokens=5, temperature=0.0)
        chat = c.chat.completions.create(model="tinyfox", messages=[{"role": "user", "content": "fox"}], max_tokens=4,
                                         temperature=0)
        assert chat.usage.prompt_tokens == 3  # the --chat-template file rendered the prompt: just the content
        assert [httpx.get(f"http://127.0.0.1:{port}{p}").status_code for p in ("/", "/docs")] == [200, 404]
        # bound to loopback only, by default
        with open("/proc/net/tcp") as f:
            table = f.read().splitlines()[1:]
        listening = [ln for ln in table
                     if ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A"]
        assert listening and all(ln.split()[1].startswith("0100007F:") for ln in listening)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = proc.stdout.read()
    assert '"POST /v1/completions" 200 prompt=3 completion=5 ' in out, out  # the request log, by default
    assert '"POST /v1/chat/completions" 200 prompt=3 completion=4 ' in out, out


def test_gptkit_serve_bad_chat_template_is_one_line(model, tmp_path, capsys):
    from gptkit.cli import main

    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    for path, fragment in ((tmp_path / "bad.jinja", "not valid Jinja"), (tmp_path / "none.jinja", "cannot read")):
        assert main(["serve", "--ckpt", str(tmp_path / "ckpt"), "--chat-template", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gptkit: error:") and err.count("\n") == 1 and fragment in err, err


def test_gptkit_serve_bad_arguments(tmp_path, capsys):
    from gptkit.cli import main

    assert main(["serve", "--ckpt", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptkit: error:")
    assert main(["serve", "--ckpt", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize("flags, fragment", [
    (["--device", "tpu"], "unknown device 'tpu'"), (["--log-level", "verbose"], "--log-level"),
    (["--max-connections", "0"], "--max-connections must be positive"), (["--threads", "0"], "--threads"),
    (["--max-queue", "-1"], "--max-queue must be >= 0"), (["--api-key", ""], "--api-key must not be empty"),
    (["--api-key", "  "], "--api-key must not be empty")])
def test_gptkit_serve_bad_flags_are_one_line(tmp_path, capsys, flags, fragment):
    from gptkit.cli import main

    assert main(["serve", "--ckpt", str(tmp_path / "missing"), *flags]) == 2  # checked before the checkpoint
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error:") and err.count("\n") == 1 and fragment in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_gptkit_serve_cuda_without_a_gpu(tmp_path, capsys):
    from gptkit.cli import main

    assert main(["serve", "--ckpt", str(tmp_path / "missing"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is available" in err


def test_gptkit_serve_port_in_use_is_one_line_and_claims_nothing(model, tmp_path, capsys):
    from gptkit.cli import main

    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["serve", "--ckpt", str(ckpt), "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("gptkit: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1, err
    assert "serving" not in err


def test_nan_and_inf_never_500(server):
    for v in ("NaN", "Infinity", "-Infinity", "1e999"):
        r = post(server, f'{{"model": "tiny", "prompt": "a", "top_p": {v}}}')
        assert r.status_code == 400, (v, r.text)


def test_many_stop_sequences_and_text_the_tokenizer_cannot_encode(client):
    r = client.completions.create(model="tiny", prompt="fox", max_tokens=5, stop=["x"] * 16)
    assert r.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.BadRequestError) as e:  # the char vocabulary has no "é"
        client.completions.create(model="tiny", prompt="é ü 🙂", max_tokens=5)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="a", max_tokens=5, stop=["x"] * 17)


def test_the_worker_thread_ends_with_the_server(model):
    """The engine thread runs while the server does and is joined when its lifespan ends (a worker left
    running would keep decoding, and holding the model, after the server is gone)."""
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny"))
    with BackgroundServer(app) as url:
        worker = app.state.worker
        assert worker.thread.is_alive() and worker.thread in threading.enumerate()
        assert health(url)["status"] == "ok"
    assert not worker.thread.is_alive() and worker.thread not in threading.enumerate()


def test_an_engine_failure_is_a_500_and_the_server_recovers(model):
    """A bug inside a decoding step (simulated) fails only the requests running then, with OpenAI's error
    shape, and the worker starts a fresh engine: the next request is served."""
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny"))
    with BackgroundServer(app) as url:
        worker = app.state.worker

        def boom():
            raise RuntimeError("simulated bug")

        worker.engine.step = boom  # the replacement engine made after the failure is a normal one
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="tiny", prompt="fox", max_tokens=5)
        assert e.value.body["type"] == "server_error" and "simulated" not in e.value.body["message"]
        r = c.completions.create(model="tiny", prompt="fox", max_tokens=5, temperature=0)
        assert r.choices[0].text == oracle(model, "fox", max_new_tokens=5, temperature=0.0)
        assert health(url)["in_flight"] == 0


def test_pages_schema_and_their_switches(model, server):
    """GET / is the playground, /docs the API reference over /openapi.json (which lists every route); the
    options turn them off (404), and the key never guards them."""
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="generate"' in page.text and "data-logprob" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "401", "404", "413", "429"} <= set(chat["responses"]) and "422" not in chat["responses"]
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "https://" not in docs.text
    for path in ("/", "/docs"):  # the query string is never the page (it once was: a reflected XSS)
        sent = httpx.get(f"{server}{path}", params={"html": "<script>alert(1)</script>"})
        assert sent.status_code == 200 and "<script>alert(1)" not in sent.text
        assert sent.text == httpx.get(f"{server}{path}").text
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny", ui=False, docs=False, api_key=KEY))
    with BackgroundServer(app) as url:
        assert [httpx.get(f"{url}{p}").status_code for p in ("/", "/docs", "/openapi.json")] == [404] * 3
        assert httpx.get(f"{url}/v1/models").status_code == 401
    app = create_app(model, model.tokenizer, ServeOptions(model_name="tiny", api_key=KEY))
    with BackgroundServer(app) as url:
        assert [httpx.get(f"{url}{p}").status_code for p in ("/", "/docs", "/openapi.json")] == [200] * 3


def test_one_log_line_per_request(client, server, caplog):
    """method, path, status, prompt and completion tokens, latency — streams counted when they end, and
    refusals made before FastAPI (here 401 would be; 404 for an unknown route) logged too."""
    with caplog.at_level("INFO", logger="gptkit.serve"):
        client.completions.create(model="tiny", prompt="fox", max_tokens=7, temperature=0)
        list(client.completions.create(model="tiny", prompt="o dog", max_tokens=5, temperature=0, stream=True))
        httpx.get(f"{server}/nothing")
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "gptkit.serve"]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "gptkit.serve"]
    import re

    pattern = r'127\.0\.0\.1 "(\w+) (\S+)" (\d+)(?: prompt=(\d+) completion=(\d+))? (\d+\.\d+)s'
    parsed = [re.fullmatch(pattern, line).groups() for line in lines]
    assert parsed[0][:5] == ("POST", "/v1/completions", "200", "3", "7")
    assert parsed[1][:5] == ("POST", "/v1/completions", "200", "5", "5")  # a stream: counted when it ends
    assert parsed[2][:5] == ("GET", "/nothing", "404", None, None)


def test_a_failed_prefill_answers_its_requests_and_the_server_goes_on(capsys):
    """An error while a step admits requests (say, out of memory in a long prefill) fails those requests with a
    500 at once, as it fails the running ones, and the next request is served; before, the admitted generations
    were in no list the worker could see, and their requests waited for ever."""
    import httpx

    m = tiny_model(TEXT)
    forward, fail = m.transformer.forward, [1]

    def flaky(idx, *a, **k):
        if idx.size(1) > 1 and fail[0]:  # the first prefill
            fail[0] -= 1
            raise RuntimeError("simulated out of memory during prefill")
        return forward(idx, *a, **k)

    m.transformer.forward = flaky
    with BackgroundServer(create_app(m, m.tokenizer, ServeOptions(model_name="tiny"))) as url:
        body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 4}
        first = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert first.status_code == 500 and first.json()["error"]["type"] == "server_error"
        second = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert second.status_code == 200 and second.json()["choices"][0]["finish_reason"] == "length"
        assert httpx.get(f"{url}/health").status_code == 200
    assert "simulated out of memory" in capsys.readouterr().err  # the traceback, for whoever runs the server


def test_a_max_batch_whose_cache_cannot_fit_is_one_line_at_start(model, tmp_path, capsys):
    """The KV cache of --max-batch rows is allocated at the first request: one too large for the machine started
    the server, then failed every request with a 500. It is refused before the port is bound."""
    from gptkit.cli import main

    model.save_pretrained(tmp_path / "ckpt")
    assert main(["serve", "--ckpt", str(tmp_path / "ckpt"), "--max-batch", str(10**12), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: --max-batch 1,000,000,000,000 needs a KV cache of at least")
    assert err.count("\n") == 1 and "lower --max-batch" in err, err


def test_an_unresolvable_host_is_one_line_without_the_serving_warning(model, tmp_path, capsys):
    from gptkit.cli import main

    model.save_pretrained(tmp_path / "ckpt")
    assert main(["serve", "--ckpt", str(tmp_path / "ckpt"), "--host", "not.a.host.invalid", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: cannot listen on not.a.host.invalid") and err.count("\n") == 1, err
