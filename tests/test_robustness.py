"""Threads, fork and memory: the same answers everywhere, caller buffers untouched, no leaks."""

import contextlib
import os
import subprocess
import sys
import threading
import time

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


@pytest.mark.parametrize("spin_us", ["0", "100000"])
def test_helpers_that_sleep_at_once_or_spin_long_give_the_serial_results(spin_us):
    """LOGITKIT_SPIN_US: helpers that sleep after every call (0) or spin between calls."""
    code = (
        "import numpy as np, logitkit as lk, time\n"
        "x = np.random.default_rng(7).normal(0, 2, (24, 40000)).astype(np.float32)\n"
        "lk.set_num_threads(1)\n"
        "want = lk.sample(x, top_k=40, top_p=0.9, seed=5).tolist(), lk.softmax(x).tobytes()\n"
        "lk.set_num_threads(2)\n"
        "for i in range(30):\n"
        "    got = lk.sample(x, top_k=40, top_p=0.9, seed=5).tolist(), lk.softmax(x).tobytes()\n"
        "    assert got == want, i\n"
        "    time.sleep(0.001 * (i % 3))\n"
    )
    env = dict(os.environ, LOGITKIT_SPIN_US=spin_us)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_two_threads_forking_at_once_do_not_deadlock():
    """Two threads fork while a slow Python fork hook (registered before logitkit's, so run
    after it) hands the GIL over between logitkit's hook and the fork: the second thread's
    hook waits for the first fork without holding the GIL."""
    code = (
        "import os, threading\n"
        "os.register_at_fork(before=lambda: sum(range(300000)))\n"
        "import logitkit\n"
        "def forker():\n"
        "    for _ in range(20):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            os._exit(0)\n"
        "        os.waitpid(pid, 0)\n"
        "ts = [threading.Thread(target=forker) for _ in range(2)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
        "print('done')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.stdout.strip() == "done", res.stderr


def test_logits_written_during_a_call_give_a_value_error_at_worst():
    """Another thread writing the logits while a call reads them (without the GIL) is a
    caller's error; the call still ends in a result or a ValueError, never a PanicException
    (a BaseException that `except Exception` would not catch)."""
    x = np.random.default_rng(0).normal(size=(4, 1 << 17)).astype(np.float32)
    base = x.copy()
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            x[:] = -np.inf
            x[:, 0] = 0
            x[:] = base

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(400):
            for call in (lambda: lk.top_k(x, 50), lambda: lk.sample(x, top_k=50, seed=1)):
                with contextlib.suppress(ValueError):
                    call()
    finally:
        stop.set()
        t.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_other_threads_rebuild_and_use_the_pool():
    """Forks taken while another thread changes the thread count (building and joining pools)
    and runs batches: every child runs a batch and exits; none inherits a locked pool."""
    x = np.random.default_rng(9).normal(0, 2, (16, 8192)).astype(np.float32)
    want = lk.softmax(x).tobytes()
    before = lk.get_num_threads()
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set():
            n = n % 4 + 1
            lk.set_num_threads(n)
            lk.softmax(x)

    t = threading.Thread(target=churn)
    t.start()
    hung = bad = 0
    try:
        for _ in range(60):
            pid = os.fork()
            if pid == 0:
                ok = lk.softmax(x).tobytes() == want
                os._exit(0 if ok else 1)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    bad += os.waitstatus_to_exitcode(status) != 0
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    hung += 1
                    break
                time.sleep(0.001)
    finally:
        stop.set()
        t.join()
        lk.set_num_threads(before)
    assert (hung, bad) == (0, 0)


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
                assert "running at the same time" in str(e), e
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


# Outputs of 16 MiB or more are views of buffers that logitkit reuses once freed.
_BIG = (64, 65536)  # 16 MiB of float32


def _address(a):
    return a.__array_interface__["data"][0]


_BIG_CALLS = [
    lambda v: lk.softmax(v),
    lambda v: lk.log_softmax(v, temperature=0.5),
    lambda v: lk.mask_top_k(v, 5),
    lambda v: lk.mask_top_p(v, 0.9),
    lambda v: lk.mask_min_p(v, 0.1),
    lambda v: lk.apply_logit_bias(v, {3: 1.0}),
    lambda v: lk.apply_penalties(v, repetition_penalty=1.3, output_tokens=[[1, 2]] * 64),
]


@pytest.mark.parametrize("call", range(len(_BIG_CALLS)))
def test_large_outputs_reuse_freed_memory_and_never_a_live_one(call):
    f = _BIG_CALLS[call]
    rng = np.random.default_rng(6)
    x, y = (rng.normal(0, 2, _BIG).astype(np.float32) for _ in range(2))
    want_x, want_y = f(x).copy(), f(y).copy()
    a = f(x)
    b = f(y)  # `a` is alive: `b` gets other memory
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, want_x)
    np.testing.assert_array_equal(b, want_y)
    view = a[1:]
    del a
    c = f(y)  # the view keeps `a`'s memory alive
    assert not np.shares_memory(view, c) and not np.shares_memory(b, c)
    np.testing.assert_array_equal(view, want_x[1:])
    np.testing.assert_array_equal(c, want_y)
    del view, b, c
    d = f(x)
    np.testing.assert_array_equal(d, want_x)
    first = _address(d)
    del d
    # were d's memory returned to the system, this array would likely take its place
    blocker = np.ones(_BIG, dtype=np.float32)
    e = f(y)  # every output is freed: the memory is reused, with the new values
    assert _address(e) == first and not np.shares_memory(e, blocker)
    np.testing.assert_array_equal(e, want_y)
    assert e.flags.c_contiguous and e.flags.writeable and e.dtype == np.float32


def test_the_base_of_a_large_output_exposes_nothing():
    import weakref

    a = lk.softmax(np.zeros(_BIG, dtype=np.float32))
    base = a.base
    assert not isinstance(base, np.ndarray)
    for reach in (memoryview, weakref.ref, lambda b: b.__array_interface__):
        with pytest.raises((TypeError, AttributeError)):
            reach(base)
    assert not np.shares_memory(np.asarray(base), a)


def test_a_freed_larger_output_serves_a_smaller_one():
    # sizes that no other test's output has (a buffer serves outputs of half its size and up)
    x = np.random.default_rng(10).normal(0, 2, (200, 65536)).astype(np.float32)
    a = lk.softmax(x)
    first = _address(a)
    del a
    blocker = np.ones((200, 65536), dtype=np.float32)
    b = lk.softmax(x[:150])  # 37.5 MiB in the freed 50 MiB buffer
    assert _address(b) == first and not np.shares_memory(b, blocker)
    np.testing.assert_array_equal(b, lk.softmax(x)[:150])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS")
def test_a_failed_large_allocation_is_a_memory_error():
    code = (
        "import resource, numpy as np, logitkit as lk\n"
        "x = np.zeros((64, 65536), dtype=np.float32)\n"
        "want = lk.softmax(x).copy()\n"
        "big = np.zeros((1, 1 << 26), dtype=np.float32)  # 256 MiB of logits, 256 MiB out\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (128 << 20),) * 2)\n"
        "for f in (lk.softmax, lk.log_softmax, lambda v: lk.mask_top_k(v, 3)):\n"
        "    try:\n"
        "        f(big)\n"
        "    except MemoryError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('no MemoryError')\n"
        "assert (lk.softmax(x) == want).all() and lk.softmax(x).base is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_large_softmax_matches_the_oracle_on_reused_memory():
    from oracle import softmax as oracle_softmax

    rng = np.random.default_rng(7)
    for _ in range(3):
        x = rng.normal(0, 3, _BIG).astype(np.float32)
        got = lk.softmax(x, temperature=0.9)
        np.testing.assert_allclose(got, oracle_softmax(x, 0.9), rtol=1e-5, atol=1e-12)
        del got


def test_large_output_errors_leave_the_memory_reusable():
    x = np.random.default_rng(8).normal(0, 2, _BIG).astype(np.float32)
    want = lk.softmax(x).copy()
    bad = x.copy()
    bad[40, 7] = np.inf
    for _ in range(3):
        with pytest.raises(ValueError, match="row 40"):
            lk.softmax(bad)
    np.testing.assert_array_equal(lk.softmax(x), want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_kept_for_reuse_is_bounded():
    rng = np.random.default_rng(9)
    rows = [rng.normal(0, 2, (n, 65536)).astype(np.float32) for n in (64, 80, 96, 112, 128)]
    for x in rows:
        lk.softmax(x)
    start = _rss_kib()
    for _ in range(3):
        for x in rows:
            lk.softmax(x)
    # at most two freed buffers (of up to 32 MiB each) stay
    assert _rss_kib() - start < 72 * 1024


def test_reuse_can_be_turned_off():
    code = (
        "import numpy as np, logitkit as lk\n"
        "x = np.zeros((64, 65536), dtype=np.float32)\n"
        "a = lk.softmax(x); b = lk.mask_top_k(x, 3)\n"
        "assert a.base is None and b.base is None and a.flags.owndata, (a.base, b.base)\n"
    )
    env = dict(os.environ, LOGITKIT_REUSE_OUTPUTS="0")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
