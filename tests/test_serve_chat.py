"""/v1/chat/completions through the official `openai` client (sync, streaming, async): every chat feature,
checked against the Python API on the same model with the prompt the chat template renders."""

import asyncio
import json

import pytest

from test_serve import TEXT, KEY, client, error_of, server, strict_server, tiny_model  # noqa: F401 (fixtures)

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from gptkit.chat_template import ChatTemplate  # noqa: E402
from gptkit.generate import SamplingParams, complete  # noqa: E402
from gptkit.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402

@pytest.fixture(scope="module")
def model():
    """test_serve's model over a vocabulary that also has the transcript's speakers (the servers imported from
    test_serve serve this one here)."""
    return tiny_model(TEXT + "System: User: Assistant:")


MESSAGES = [{"role": "system", "content": "the fox"}, {"role": "user", "content": "o Juliet"}]
TURN = ChatTemplate().stop


def rendered(messages=MESSAGES) -> str:
    return ChatTemplate().render(messages)


def chat_oracle(model, messages=MESSAGES, stop=TURN, **kw):
    """The generation core's answer to the rendered conversation (the server also stops at <|endoftext|>)."""
    params = SamplingParams(stop=stop, stop_token_ids=(model.tokenizer.eot_id,), **kw)
    return complete(model, [rendered(messages)], params, tokenizer=model.tokenizer)[0]


def test_chat_equals_the_python_api(client, model):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0)
    ch = r.choices[0]
    assert ch.message.role == "assistant" and ch.message.content == chat_oracle(model, max_new_tokens=40,
                                                                                temperature=0.0).text
    assert len(ch.message.content) > 10 and ch.finish_reason in ("length", "stop") and ch.index == 0
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert r.usage.prompt_tokens == len(rendered()) and r.usage.completion_tokens <= 40  # char tokenizer
    # max_completion_tokens is the newer name and wins; without either, the reply may fill the context
    r2 = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, max_completion_tokens=9,
                                        temperature=0)
    assert r2.choices[0].message.content == chat_oracle(model, max_new_tokens=9, temperature=0.0).text
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0)
    assert full.usage.prompt_tokens + full.usage.completion_tokens <= 512
    assert full.choices[0].message.content == chat_oracle(model, max_new_tokens=512 - len(rendered()),
                                                          temperature=0.0).text
    # text parts are joined; a list with one part is the string
    parts = [{"role": "user", "content": [{"type": "text", "text": "o Jul"}, {"type": "text", "text": "iet"}]}]
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=8, temperature=0)
    b = client.chat.completions.create(model="tiny", messages=MESSAGES[1:], max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_streamed_chat_joins_to_the_plain_one(client, model):
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 5  # really streamed
    assert "".join(pieces) == chat_oracle(model, max_new_tokens=30, temperature=0.0).text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0] in ("length", "stop")
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens <= 30
    assert last.usage.prompt_tokens == len(rendered())
    assert all(c.usage is None for c in chunks[:-1])
    without = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3, stream=True))
    assert all(c.usage is None and c.choices for c in without)


def test_async_client_concurrent_plain_and_streamed(server, model):
    async def run():
        c = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=60)
        convs = [[{"role": "user", "content": w}] for w in ("fox", "dog", "o Juliet")]
        plain = [c.chat.completions.create(model="tiny", messages=m, max_tokens=12, temperature=0) for m in convs]
        stream = await c.chat.completions.create(model="tiny", messages=convs[0], max_tokens=12, temperature=0,
                                                 stream=True)
        got = await asyncio.gather(*plain)
        streamed = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        await c.close()
        return convs, [r.choices[0].message.content for r in got], streamed

    convs, texts, streamed = asyncio.run(run())
    for m, text in zip(convs, texts):
        assert text == chat_oracle(model, m, max_new_tokens=12, temperature=0.0).text
    assert streamed == texts[0]


def test_n_seed_temperature_top_p_and_penalties(client, model):
    def ask(seed, **kw):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=25, n=3, seed=seed, **kw)
        return [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]

    a = ask(7, temperature=0.9, top_p=0.95)
    assert len(set(a)) == 3 and ask(7, temperature=0.9, top_p=0.95) == a and ask(8, temperature=0.9, top_p=0.95) != a
    # choice i samples with seed + i, as the Python API does with that seed
    assert a[1] == chat_oracle(model, max_new_tokens=25, temperature=0.9, top_p=0.95, seed=8).text
    pen = dict(presence_penalty=1.5, frequency_penalty=2.0)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=0, **pen)
    want = chat_oracle(model, max_new_tokens=60, temperature=0.0, **pen).text
    assert r.choices[0].message.content == want != chat_oracle(model, max_new_tokens=60, temperature=0.0).text


def test_stop_sequences_default_and_given(client, model):
    free = chat_oracle(model, stop=(), max_new_tokens=40, temperature=0.0).text
    stop = free[10:13]
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0, stop=stop)
    assert r.choices[0].message.content == free[:free.find(stop)] and r.choices[0].finish_reason == "stop"
    # the default stop is the template's turn separator; "stop": [] turns it off
    none = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0, stop=[])
    assert none.choices[0].message.content == free


def test_logprobs_and_top_logprobs(client, model):
    ref = chat_oracle(model, max_new_tokens=12, temperature=0.0, logprobs=3)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(x.token for x in content) == r.choices[0].message.content == ref.text
    assert [x.logprob for x in content] == pytest.approx([x.logprob for x in ref.logprobs], abs=1e-5)
    for x in content:
        assert len(x.top_logprobs) == 3 and x.top_logprobs[0].logprob == pytest.approx(x.logprob, abs=1e-6)
        assert x.bytes == list(x.token.encode())
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, logprobs=True)
    assert all(x.top_logprobs == [] for x in plain.choices[0].logprobs.content)
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4).choices[0].logprobs is None
    chunks = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    assert [x.logprob for x in streamed] == pytest.approx([x.logprob for x in ref.logprobs], abs=1e-5)
    assert all(len(x.top_logprobs) == 2 for x in streamed)
    # with a stop sequence cut from the text, the stream carries the same entries as the answer: none for the
    # tokens of the cut stop (they were streamed before), each with the chunk whose text it is
    stop = ref.text[5:7]
    cut = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                         logprobs=True, stop=[stop])
    answer = [x.token for x in cut.choices[0].logprobs.content]
    chunks = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                            logprobs=True, stop=[stop], stream=True)
    pieces = [c.choices[0] for c in chunks if c.choices]
    streamed = [x.token for c in pieces if c.logprobs for x in c.logprobs.content]
    assert streamed == answer and "".join(answer) == cut.choices[0].message.content == ref.text[:ref.text.find(stop)]
    assert all("".join(x.token for x in c.logprobs.content) == c.delta.content for c in pieces if c.logprobs)


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"1": 3}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "a"}]}, "messages"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "a"}]}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": []}, "messages"),
    ({"n": 40}, "n"),
    ({"max_tokens": 600}, "max_tokens"),
    ({"max_completion_tokens": 600}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "é"}]}, "messages"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"temperature": 3}, "temperature"),
])
def test_unsupported_and_bad_chat_requests_are_openai_400s(server, extra, param):
    body = {"model": "tiny", "messages": MESSAGES, **extra}
    r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and (err["param"] == param or param in err["message"]), err


def test_chat_errors_through_the_client(client, strict_server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "fox " * 200}])
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{strict_server}/v1", api_key="bad", max_retries=0).chat.completions.create(
            model="tiny", messages=MESSAGES)
    ok = openai.OpenAI(base_url=f"{strict_server}/v1", api_key=KEY, max_retries=0)
    reply = ok.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content is not None


JINJA = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}{{ eos_token }}{% endfor %}"
         "{% if add_generation_prompt %}a:{% endif %}")


def test_a_stored_jinja_template_renders_the_prompt(model):
    """A tokenizer's own chat_template (Hugging Face's convention) replaces the plain transcript; its special
    tokens are encoded as special tokens, and it adds no stop sequence of its own."""
    tok = model.tokenizer
    tok.chat_template = JINJA
    try:
        app = create_app(model, tok, ServeOptions(model_name="tiny"))
        with BackgroundServer(app) as url:
            r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES,
                                                               "max_tokens": 20, "temperature": 0}).json()
    finally:
        tok.chat_template = None
    prompt = tok.encode("s:the fox<|endoftext|>u:o Juliet<|endoftext|>a:", allowed_special="all")
    assert prompt.count(tok.eot_id) == 2 and r["usage"]["prompt_tokens"] == len(prompt)
    want = complete(model, [prompt], SamplingParams(max_new_tokens=20, temperature=0.0,
                                                    stop_token_ids=(tok.eot_id,)), tokenizer=tok)[0].text
    assert r["choices"][0]["message"]["content"] == want


def test_chat_template_is_saved_exported_and_imported(model, tmp_path):
    """gptkit's tokenizer files and a Hugging Face export keep the template (tokenizer_config.json), and the
    reference reader, transformers' apply_chat_template, renders the same prompt as gptkit."""
    from gptkit import GPT, Tokenizer
    from gptkit.interop.hf import export_hf

    tok = Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog " * 20], vocab_size=300)
    tok.chat_template = JINJA
    tok.save(tmp_path / "tok")
    assert Tokenizer.from_pretrained(tmp_path / "tok").chat_template == JINJA
    m = GPT(model.config.__class__(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    export_hf(m, tmp_path / "hf", tokenizer=tok)
    cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == JINJA
    (tmp_path / "hf" / "gptkit_tokenizer.json").unlink()  # read it as a plain Hugging Face directory
    assert GPT.from_pretrained(tmp_path / "hf").tokenizer.chat_template == JINJA
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    msgs = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps"}]
    want = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert want == ChatTemplate(JINJA, "<|endoftext|>", "<|endoftext|>").render(msgs)


def test_a_template_that_fails_is_the_servers_error_and_a_refusal_the_clients(model):
    """A Python error inside the stored template (here for a message with a number in it) was a bare 500; it
    is now a 500 that says the server's template failed, and the server goes on serving; the template's own
    raise_exception stays the client's 400."""
    tok = model.tokenizer
    tok.chat_template = ("{% for m in messages %}{% if m.content == 'boom' %}{{ 1 / 0 }}{% endif %}"
                         "{% if m.content == 'no' %}{{ raise_exception('not this one') }}{% endif %}"
                         "{{ m.content }}{% endfor %}")
    try:
        app = create_app(model, tok, ServeOptions(model_name="tiny"))
        with BackgroundServer(app) as url:
            def ask(content):
                return httpx.post(f"{url}/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2})
            broken, refused, fine = ask("boom"), ask("no"), ask("the fox")
    finally:
        tok.chat_template = None
    assert broken.status_code == 500 and broken.json()["error"]["type"] == "server_error"
    want = "the server's chat template failed: ZeroDivisionError: division by zero"
    assert broken.json()["error"]["message"] == want
    assert refused.status_code == 400 and "refused the messages: not this one" in refused.json()["error"]["message"]
    assert fine.status_code == 200
