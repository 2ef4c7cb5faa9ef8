"""speculate="auto"'s choice between plain and drafted engine calls, on a hand-driven clock."""

from purevedec.generation.draft_policy import MIN_STEPS_LEFT, PROBE_EVERY, WARM_CALLS, DraftPolicy


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_call(policy, clock, seconds: float, tokens: int, columns: int = 64, steps_left: int = 10_000) -> int:
    """One engine call as the engine drives the policy: choose, start, (the call), record."""
    drafts = policy.choose(steps_left)
    started = policy.start()
    clock.now += seconds
    policy.record(drafts, columns, tokens, started)
    return drafts


def test_drafts_are_tried_only_after_measured_plain_calls_and_on_long_jobs():
    clock = Clock()
    policy = DraftPolicy(4, clock=clock)
    chosen = [run_call(policy, clock, 1.0, 8) for _ in range(WARM_CALLS + 1)]
    # the first call compiled (not counted); drafts come once WARM_CALLS plain calls were measured
    assert chosen == [0] * (WARM_CALLS + 1) and policy.rates.plain == 8.0
    assert run_call(policy, clock, 1.0, 8) == 4
    short = DraftPolicy(4, clock=clock)
    assert {run_call(short, clock, 1.0, 8, steps_left=MIN_STEPS_LEFT - 1) for _ in range(20)} == {0}


def test_the_faster_mode_wins_and_the_other_is_re_measured():
    clock = Clock()
    policy = DraftPolicy(4, clock=clock)
    for _ in range(WARM_CALLS + 1):
        run_call(policy, clock, 1.0, 8)
    # drafted calls write 20 tokens a second: the first compiles, the next is measured
    drafted = []
    for _ in range(3 * PROBE_EVERY):
        d = policy.choose(10_000)
        started = policy.start()
        clock.now += 1.0
        policy.record(d, 64, 20 if d else 8, started)
        drafted.append(d)
    assert policy.rates.drafted > policy.rates.plain
    plain_calls = drafted.count(0)
    assert 1 <= plain_calls <= 3   # only the probes of the slower mode
    # now drafts turn slow (a page stopped repeating itself): within a probe period or two, plain wins
    later = []
    for _ in range(3 * PROBE_EVERY):
        d = policy.choose(10_000)
        started = policy.start()
        clock.now += 1.0 if not d else 4.0
        policy.record(d, 64, 8 if not d else 9, started)
        later.append(d)
    assert policy.rates.drafted < policy.rates.plain
    assert later[-PROBE_EVERY:].count(4) <= 1


def test_a_call_at_a_new_cache_size_is_not_counted():
    """Its time is mostly compiling: a 100 s call at a new size leaves the rate as it was."""
    clock = Clock()
    policy = DraftPolicy(4, clock=clock)
    run_call(policy, clock, 1.0, 8, columns=32)
    run_call(policy, clock, 1.0, 8, columns=32)
    assert policy.rates.plain == 8.0
    run_call(policy, clock, 100.0, 8, columns=64)
    assert policy.rates.plain == 8.0
