"""Threads, fork and memory: the same answers everywhere, caller buffers untouched, no leaks."""

import os
import sys
import threading

import numpy as np
import pytest

import logitkit as lk


def _calls(x):
    """One call of every public function on x, as comparable bytes."""
    toks = [np.arange(3)] * x.shape[0]
    return [
        lk.softmax(x, temperature=0.7).tobytes(),
        lk.log_softmax(x).tobytes(),
        lk.argmax(x).tobytes(),
        lk.top_k(x, 7).indices.tobytes(),
        lk.mask_top_k(x, 7).tobytes(),
        lk.mask_top_p(x, 0.9).tobytes(),
        lk.mask_min_p(x, 0.1).tobytes(),
        lk.apply_logit_bias(x, {1: 2.0}).tobytes(),
        lk.apply_penalties(x, output_tokens=toks, repetition_penalty=1.2).tobytes(),
        lk.sample(x, temperature=0.8, top_k=50, top_p=0.9, seed=3).tobytes(),
        lk.logprobs(x, toks, top_n=3).token_logprobs.tobytes(),
        lk.sample_batch(x, lk.SamplingParams(top_p=0.9, seed=4)).tokens.tobytes(),
    ]


def test_threads_share_read_only_inputs_and_agree_with_serial():
    x = np.random.default_rng(0).normal(0, 2, (8, 20000)).astype(np.float32)
    x.setflags(write=False)
    want = _calls(x)
    errors = []

    def worker():
        try:
            for _ in range(5):
                assert _calls(x) == want
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_results_do_not_depend_on_thread_count():
    x = np.random.default_rng(1).normal(0, 2, (16, 30000)).astype(np.float32)
    before = lk.get_num_threads()
    try:
        lk.set_num_threads(1)
        want = _calls(x)
        for n in (2, 3, 8):
            lk.set_num_threads(n)
            assert lk.get_num_threads() == n
            assert _calls(x) == want
    finally:
        lk.set_num_threads(before)


def test_caller_arrays_are_never_modified():
    x = np.random.default_rng(2).normal(0, 2, (4, 3000)).astype(np.float32)
    keep = x.copy()
    _calls(x)
    assert np.array_equal(x, keep)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_after_use_works():
    x = np.random.default_rng(3).normal(0, 2, (16, 30000)).astype(np.float32)
    want = _calls(x)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the pool threads are gone; batches must still run
        try:
            ok = _calls(x) == want
        except BaseException:
            ok = False
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"


def _rss_kib():
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_repeated_calls_keep_memory_flat():
    x = np.random.default_rng(4).normal(0, 2, (2, 2000)).astype(np.float32)
    for _ in range(200):
        _calls(x)
    start = _rss_kib()
    for _ in range(3000):
        _calls(x)
    assert _rss_kib() - start < 4096, "resident memory grew by more than 4 MiB"


def test_errors_do_not_leak_or_poison_later_calls():
    bad = np.zeros((2, 100), dtype=np.float32)
    bad[1, 5] = np.nan
    for _ in range(200):
        with pytest.raises(ValueError, match="row 1"):
            lk.sample(bad, seed=0)
    good = np.zeros((2, 100), dtype=np.float32)
    assert lk.sample(good, temperature=0.0).tolist() == [0, 0]


def _writers(shared, x):
    """Calls that write ``shared`` (out=) or read it as logits while others write it."""
    return [
        lambda: lk.softmax(x, out=shared),
        lambda: lk.log_softmax(x, out=shared),
        lambda: lk.mask_top_p(x, 0.9, out=shared),
        lambda: lk.mask_top_k(x, 5, out=shared),
        lambda: lk.apply_penalties(x, repetition_penalty=1.2, output_tokens=[[1]] * 8, out=shared),
        lambda: lk.apply_logit_bias(shared, {1: 0.5}, out=shared),
        lambda: lk.sample(shared, temperature=0.8, seed=1),
        lambda: lk.argmax(shared),
        lambda: lk.sample_batch(shared, lk.SamplingParams(seed=2)),
    ]


def test_concurrent_calls_sharing_an_out_array_never_panic():
    """A shared out= is the caller's race: every call either completes or raises ValueError
    naming the array it could not borrow; nothing panics and nothing is left corrupted."""
    x = np.random.default_rng(5).normal(0.0, 2.0, (8, 65536)).astype(np.float32)
    shared = x.copy()
    failures: list[BaseException] = []
    refused: list[str] = []

    def worker(i):
        calls = _writers(shared, x)
        for j in range(40):
            try:
                calls[(i + j) % len(calls)]()
            except ValueError as e:
                assert "is in use by another call" in str(e), e
                refused.append(str(e).split(":")[0])
            except BaseException as e:  # a PanicException is a BaseException
                failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert set(refused) <= {"out", "logits"}
    # the array is still usable, and a call on its own gives the serial answer
    np.testing.assert_array_equal(lk.softmax(x, out=shared), lk.softmax(x))
