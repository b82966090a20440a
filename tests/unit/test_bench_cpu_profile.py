"""bench.cpu_profile: perf script output read into stacks, charged by object and function."""

from __future__ import annotations

from bench.cpu_profile import CpuUse, Frame, parse_samples, part_of, report, summarize

PY = "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"
SO = "/tmp/tree/2e91969b__mypyc.cpython-311-x86_64-linux-gnu.so"
UV = "/venv/site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so"

SCRIPT = f"""python 15924 65228.030218:     200040 cpu-clock: \n\
\t          18f120 _Py_dict_lookup+0x10 ({PY})
\t          250a3f _PyEval_EvalFrame+0xcf (inlined)
\t          104fe1 CPyDef_guarding___StreamGuard___filter+0x101 ({SO})
\t          1d76b1 CPyDef_relay___ClientRelay____relay_messages+0x1c1 ({SO})
\t           a98ae __pyx_f_6uvloop_4loop_run_in_context1+0x12e ({UV})

python 15924 65228.030418:     200040 cpu-clock: \n\
\t          250a3f _PyEval_EvalFrame+0xcf (inlined)
\t          1d76b1 CPyDef_relay___ClientRelay____flush+0x1c1 ({SO})
\t           a98ae __pyx_f_6uvloop_4loop_run_in_context1+0x12e ({UV})

python 15924 65228.030618:     200040 cpu-clock: \n\
\t ffffffffa1c3e2a0 tcp_sendmsg+0x30 ([kernel.kallsyms])
\t           90e3 __GI___libc_write+0x13 (/usr/lib/x86_64-linux-gnu/libc.so.6)

python 15924 65228.030818:     200040 cpu-clock: \n\
\t            8df1 uv__io_poll+0x24b ({UV})

"""


def test_stacks_are_read_innermost_first_with_offsets_and_paths_dropped() -> None:
    stacks = parse_samples(SCRIPT)
    assert len(stacks) == 4
    assert stacks[0][0] == Frame("_Py_dict_lookup", "libpython3.11.so.1.0")
    assert stacks[0][1] == Frame("_PyEval_EvalFrame", "inlined")
    assert [f.symbol for f in stacks[3]] == ["uv__io_poll"]


def test_user_samples_are_charged_to_object_and_innermost_proxy_function() -> None:
    profile = summarize(parse_samples(SCRIPT))
    assert profile.kernel == 1
    assert profile.user == 3
    # An inlined innermost frame belongs to the object of the frame it was inlined into.
    assert profile.parts == {"CPython": 1, "proxy (compiled)": 1, "uvloop": 1}
    assert profile.functions == {"guarding.StreamGuard.filter": 1,
                                 "relay.ClientRelay._flush": 1, "-": 1}


def test_parts_are_named_by_object() -> None:
    assert part_of("[kernel.kallsyms]") == "kernel"
    assert part_of("libevent-2.1.so.7.0.1") == "libevent"
    assert part_of("pgbouncer") == "pgbouncer"
    assert part_of("[vdso]") == "[vdso]"


def test_report_splits_the_measured_user_time_in_the_sampled_proportions() -> None:
    text = report("pgtenant", summarize(parse_samples(SCRIPT)), CpuUse(user=6.0, kernel=20.0),
                  top=5)
    lines = text.splitlines()
    assert lines[0].startswith("pgtenant: 26.0 us CPU per transaction: user 6.0, kernel 20.0")
    assert "2.00 us  guarding.StreamGuard.filter" in [line.strip() for line in lines]
    assert "2.00 us  (no proxy frame: the event loop)" in [line.strip() for line in lines]
    assert any(line.split()[:2] == ["CPython", "2.00"] for line in lines)


def test_no_samples_gives_a_report_without_dividing_by_zero() -> None:
    text = report("pgbouncer", summarize([]), CpuUse(user=1.0, kernel=2.0), top=5)
    assert text.splitlines() == ["pgbouncer: 3.0 us CPU per transaction: user 1.0, kernel 2.0 "
                                 "(user split by 0 samples)"]


def test_detail_splits_a_function_and_the_event_loop_by_innermost_symbol() -> None:
    profile = summarize(parse_samples(SCRIPT))
    # The inlined frame is skipped: the innermost symbol is of the frame it was inlined in.
    assert profile.inner == {("guarding.StreamGuard.filter", "_Py_dict_lookup (CPython)"): 1,
                             ("relay.ClientRelay._flush",
                              "CPyDef_relay___ClientRelay____flush (proxy (compiled))"): 1,
                             ("-", "uv__io_poll (uvloop)"): 1}
    text = report("pgtenant", profile, CpuUse(user=6.0, kernel=20.0), top=5,
                  detail=["-", "guarding.StreamGuard.filter"])
    lines = [line.strip() for line in text.splitlines()]
    at = lines.index("the event loop by innermost symbol:")
    assert lines[at + 1] == "2.00 us  uv__io_poll (uvloop)"
    at = lines.index("guarding.StreamGuard.filter by innermost symbol:")
    assert lines[at + 1] == "2.00 us  _Py_dict_lookup (CPython)"
