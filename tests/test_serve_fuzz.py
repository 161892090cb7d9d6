"""Fuzzing the server from its own schema: schemathesis reads /openapi.json and sends generated requests, valid
and invalid, to every operation. Bounded in examples per operation and in time; no answer may be a 5xx, every
status must be one the schema documents, and documented bodies must match their schema."""

import time

import pytest
import torch

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install 'gptkit[test]')")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode, checks  # noqa: E402

from gptkit import GPT, GPTConfig, Tokenizer  # noqa: E402
from gptkit.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402

EXAMPLES = 50
"""Generated requests per operation and generation mode (valid, invalid)."""
BUDGET_S = 120
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@pytest.fixture(scope="module")
def url():
    # byte-level BPE: any text a fuzzer invents can be encoded; a short context bounds every generation
    tok = Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog. User: Assistant: " * 8], 320)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)).eval()
    app = create_app(model, tok, ServeOptions(model_name="fuzz", max_batch=8, max_queue=64))
    with BackgroundServer(app) as u:
        yield u


def fuzz(operation, mode, url: str, deadline: float) -> int:
    """Send generated requests for one operation in one mode; return how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case):
        nonlocal sent
        if time.monotonic() > deadline:
            return
        response = case.call(base_url=url, timeout=30)
        sent += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (a GET without parameters)
        assert mode is GenerationMode.NEGATIVE
    return sent


def test_no_request_makes_a_server_error(url):
    """(schemathesis' own pytest plugin does not run under this pytest; its strategies are driven directly.)"""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    deadline = time.monotonic() + BUDGET_S
    sent = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in GenerationMode:
            sent[f"{op.label} {mode.value}"] = fuzz(op, mode, url, deadline)
    print("schemathesis requests:", sent, "total", sum(sent.values()))
    ops = {k.rsplit(" ", 1)[0] for k in sent}
    assert ops >= {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models", "GET /health"}
    assert all(n >= 10 for k, n in sent.items() if "POST" in k), sent  # the budget was not spent on one
