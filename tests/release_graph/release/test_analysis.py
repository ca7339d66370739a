"""Judging a new version while it serves: the analysis rules over measured numbers, without any component."""

from release_graph.fleet.model import Analysis
from release_graph.release.analysis import ERROR, FAILED, INCONCLUSIVE, SUCCESSFUL, Verdict, WatchCounts, judge
from resources.metrics import Measurement

ANALYSIS = Analysis(max_error_rate=0.01, max_p95_ms=300, min_requests=20)


def test_a_version_with_few_errors_and_fast_answers_is_successful():
    verdict = judge(ANALYSIS, [Measurement("prometheus", requests=400, errors=2, p95_ms=120)])
    assert verdict.outcome == SUCCESSFUL and "error rate 0.5%" in verdict.reason
    assert verdict.values == {"prometheus": {"requests": 400, "errors": 2, "error_rate": 0.005, "p95_ms": 120}}


def test_an_error_rate_or_a_p95_above_the_limit_fails_and_says_by_how_much():
    verdict = judge(ANALYSIS, [Measurement("haproxy", requests=100, errors=5, mean_ms=20),
                               Measurement("prometheus", requests=100, errors=5, p95_ms=450)])
    assert verdict.outcome == FAILED
    assert "haproxy: error rate 5.0% (5 of 100) above 1.0%" in verdict.reason
    assert "prometheus: p95 450 ms above 300 ms" in verdict.reason


def test_without_percentiles_the_mean_response_time_is_compared():
    verdict = judge(ANALYSIS, [Measurement("haproxy", requests=100, errors=0, mean_ms=800)])
    assert verdict.outcome == FAILED and "mean response time 800 ms" in verdict.reason


def test_too_little_traffic_is_inconclusive_never_successful():
    verdict = judge(ANALYSIS, [Measurement("haproxy", requests=3, errors=0)])
    assert verdict.outcome == INCONCLUSIVE and "3 request(s), fewer than the 20" in verdict.reason


def test_an_alarm_in_alarm_state_fails_whatever_the_traffic():
    verdict = judge(ANALYSIS, [Measurement("cloudwatch", alarms=("orders-5xx",))])
    assert verdict.outcome == FAILED and "alarm orders-5xx in ALARM" in verdict.reason


def test_errors_in_a_row_up_to_the_limit_then_roll_back_and_a_good_answer_resets_the_count():
    counts = WatchCounts(Analysis(consecutive_error_limit=3, failure_limit=1))
    error = Verdict(ERROR, "prometheus: connection refused")
    assert counts.add(error) is None and counts.add(error) is None
    assert counts.add(Verdict(SUCCESSFUL, "ok")) is None  # resets the errors in a row
    assert counts.add(error) is None and counts.add(error) is None
    assert "could not measure 3 time(s) in a row" in counts.add(error)
    # one Failed result is tolerated with failure_limit 1, the second rolls back
    assert counts.add(Verdict(FAILED, "error rate 5%")) is None
    assert counts.add(Verdict(FAILED, "error rate 6%")) == "the analysis failed: error rate 6%"
