"""The shared pieces of the data commands: a filter pass (gptkit.data.passes) with a toy filter, record
batching, and the in-order worker map (gptkit.data.workers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gptkit.data.passes import FilterPass, batched
from gptkit.runtime import Progress
from gptkit.data.records import Record
from gptkit.data.shards import DataError
from gptkit.data.workers import ordered_map, worker_pool

DOCS = [{"id": 1, "text": "keep me"}, {"id": 2, "text": "drop me"}, {"id": 3, "text": "keep this too"}]


def _input(tmp_path: Path, docs=DOCS) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(d) + "\n" for d in docs) + "not json\n")
    return p


def _toy(tmp_path: Path, other: Path | None, warnings: list[str]) -> dict:
    """Keep the documents whose text starts with 'keep'; write the others' ids to `other`."""
    run = FilterPass([_input(tmp_path)], tmp_path / "kept.jsonl", text_field="text", report=None,
                     others={"--other": other}, warn=warnings.append)
    with run.writing(other, False, "toy") as w:
        for batch in batched(run.reader.records(), 2):
            for rec in batch:
                if rec.text.startswith("keep"):
                    w.keep(rec.to_json())
                else:
                    w.drop(json.dumps({"dropped": rec.fields["id"]}))
            w.advance()
    return run.finish(run.report("toy-report", {"kept": 2}, {"workers": 1}))


def test_a_pass_writes_kept_others_and_a_report_with_the_shared_header(tmp_path):
    warnings: list[str] = []
    rep = _toy(tmp_path, tmp_path / "other.jsonl", warnings)
    kept = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == [DOCS[0], DOCS[2]]  # the input objects unchanged, in input order
    assert (tmp_path / "other.jsonl").read_text() == '{"dropped": 2}\n'
    assert json.loads((tmp_path / "kept.report.json").read_text()) == rep
    keys = list(rep)
    assert keys[:4] == ["format", "format_version", "inputs", "output"] and keys[-3:] == ["bad_input", "files", "run"]
    assert rep["format"] == "toy-report" and rep["output"] == str(tmp_path / "kept.jsonl") and rep["kept"] == 2
    assert rep["bad_input"]["not_json_lines"] == 1 and len(warnings) == 1 and "not JSON" in warnings[0]
    assert rep["run"]["workers"] == 1 and rep["run"]["seconds"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "kept.jsonl", "kept.report.json",
                                                           "other.jsonl"]


def test_a_pass_that_fails_leaves_no_output(tmp_path):
    run = FilterPass([_input(tmp_path)], tmp_path / "kept.jsonl", text_field="text", report=None,
                     others={"--other": tmp_path / "o.jsonl"})
    with pytest.raises(RuntimeError):
        with run.writing(tmp_path / "o.jsonl", False, "toy") as w:
            w.keep("{}")
            raise RuntimeError("the filter broke")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_pass_over_no_document_is_one_error_and_no_output(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"body": "no text field"}\n')
    run = FilterPass([p], tmp_path / "kept.jsonl", text_field="text", report=None, others={})
    with pytest.raises(DataError) as e:
        with run.writing(None, False, "toy") as w:
            for rec in run.reader.records():
                w.keep(rec.to_json())
    assert "empty corpus" in str(e.value) and "without a string 'text' field" in str(e.value)
    assert "\n" not in str(e.value) and sorted(x.name for x in tmp_path.iterdir()) == ["in.jsonl"]


def test_outputs_are_checked_before_any_work(tmp_path):
    src = _input(tmp_path)
    with pytest.raises(DataError, match="is also an input"):
        FilterPass([src], tmp_path / "kept.jsonl", text_field="text", report=None, others={"--other": src})
    with pytest.raises(DataError, match="--other and --out name the same file"):
        FilterPass([src], tmp_path / "kept.jsonl", text_field="text", report=None,
                   others={"--other": tmp_path / "kept.jsonl"})
    with pytest.raises(DataError, match="does not exist"):
        FilterPass([src], tmp_path / "no" / "kept.jsonl", text_field="text", report=None, others={})


def test_batched_by_count_and_by_characters():
    recs = [Record("x" * n, None, "p", None) for n in (5, 1, 1, 9, 2, 2, 2)]
    by_count = list(batched(recs, 3))
    assert [len(b) for b in by_count] == [3, 3, 1] and [r for b in by_count for r in b] == recs
    by_chars = list(batched(recs, 100, max_chars=6))  # a batch closes once it holds 6 characters
    assert [[len(r.text) for r in b] for b in by_chars] == [[5, 1], [1, 9], [2, 2, 2]]
    assert list(batched([], 3)) == []


def _square_all(xs: list[int]) -> list[int]:
    return [x * x for x in xs]


def test_ordered_map_keeps_input_order_with_workers():
    jobs = [(i, ([i, i + 1],)) for i in range(40)]
    here = list(ordered_map(_square_all, jobs, None, 1))
    with worker_pool(2, Progress(live=False)) as pool:
        assert pool is not None
        there = list(ordered_map(_square_all, jobs, pool, 2))
    assert here == there == [(i, [i * i, (i + 1) ** 2]) for i in range(40)]
    with worker_pool(1, Progress(live=False)) as pool:
        assert pool is None  # one worker: the work runs in the caller


@pytest.mark.parametrize("command", [["data", "clean"], ["data", "dedup"]])
def test_a_lone_surrogate_in_any_field_is_replaced_and_counted(command, tmp_path, capsys):
    """JSON can spell a lone surrogate ("\\ud800") in any string, which no UTF-8 output can hold: in a field other
    than the text (a title, a key) it once stopped the whole pass with a traceback. Replaced by U+FFFD wherever it
    is, the line is kept and counted as one with undecodable bytes, as in the text field."""
    from gptkit.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "one whole document here", "title": "bad \\ud800 title", "k\\udfff": 1}\n'
                   '{"text": "a second and different document", "emoji": "\\ud83d\\ude00"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main([*command, "--input", str(src), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["title"] == "bad \ufffd title" and "k\ufffd" in rows[0] and rows[1]["emoji"] == "\U0001f600"
    report = json.loads(out.with_name("out.report.json").read_text())
    assert report["bad_input"]["documents_with_undecodable_bytes"] == 1


def _signals_here(_):
    import signal

    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


GROUP_TERM = """
import signal, sys, time
from gptkit.cli import _terminate
from gptkit.data.workers import ordered_map, worker_pool
from gptkit.errors import Terminated
from gptkit.runtime import Progress

def slow(i):
    time.sleep(60)
    return i

signal.signal(signal.SIGTERM, _terminate)  # as `gptkit` installs it
try:
    with worker_pool(2, Progress(live=False)) as pool:
        print("ready", flush=True)
        list(ordered_map(slow, ((i, (i,)) for i in range(8)), pool, 2))
except Terminated:
    print("terminated", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_a_sigterm_to_the_process_group_ends_the_pool_at_once():
    """`timeout`, systemd and job schedulers send SIGTERM to the whole process group: the forked workers ran the
    caller's handler, which raised inside the pool, and `shutdown(wait=True)` could wait for ever (6 of 18 timed
    kills of prepare and dedup hung at one core). Now the workers end at once and the caller leaves in one line."""
    import contextlib
    import signal as sig
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", GROUP_TERM], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the workers are in their tasks
        t0 = time.monotonic()
        os.killpg(proc.pid, sig.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig.SIGKILL)  # whatever is left of a hung run
    assert time.monotonic() - t0 < 10 and out.strip() == "terminated", (out, err)
    assert "Traceback" not in err, err


def test_workers_leave_stop_signals_to_the_caller():
    import signal as sig

    with worker_pool(2, Progress(live=False)) as pool:
        term, intr = pool.submit(_signals_here, 0).result()
    assert term == sig.SIG_DFL and intr == sig.SIG_IGN
