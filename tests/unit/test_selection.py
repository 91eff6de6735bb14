"""The node daemon's `[[select]]` tables: which processes, and what their agents are told
(a table's `settings = {...}` over the daemon's own)."""

from __future__ import annotations

import tomllib

import pytest

from collector.discovery import ProcessFacts
from collector.selection import Selection
from collector.service import agent_settings_from
from collector.settings import resolve
from profiler.errors import ConfigError

CONFIG = """
sampler = "parentbased_traceidratio"
sampler_arg = 0.5
exclude = ["noisy.*"]

[[select]]
env = "TIER=edge"
settings = { sampler = "traceidratio", sampler_arg = 0.01, burst = 0.05 }

[[select]]
service = "shop-*"
[select.settings]
max_events = 16
exclude = ["shop.health"]

[[select]]
env = "ASYNC_INSPECT_ENABLE=1"
"""


def process(pid: int, **environ: str) -> ProcessFacts:
    return ProcessFacts(pid, 0.0, "python", ["python", "app.py"], environ, None)


def load(text: str) -> tuple[Selection, dict[str, object]]:
    file = tomllib.loads(text)
    settings = resolve({}, {}, file, "c.toml")
    return Selection.from_config(file, "c.toml", settings), file


def test_a_table_sets_what_the_agents_of_its_processes_do() -> None:
    # GIVEN a daemon sampling half its traces, and two tables with settings of their own
    selection, _ = load(CONFIG)
    # WHEN processes are decided
    edge = selection.decide(process(1, TIER="edge"), None, "edge")
    shop = selection.decide(process(2, ASYNC_INSPECT_ENABLE="1"), None, "shop-cart")
    plain = selection.decide(process(3, ASYNC_INSPECT_ENABLE="1"), None, "billing")
    # THEN the first matching table's settings go over the daemon's, and only for its own
    assert edge.selected and edge.table is not None and edge.table.settings is not None
    agent = agent_settings_from(edge.table.settings)
    assert (agent.sample_ratio, agent.burst, agent.burst_every) == (1.0, 0.05, 5.0)
    assert not agent.parent_based and agent.exclude == ("noisy.*",)
    assert shop.table is not None and shop.table.settings is not None
    agent = agent_settings_from(shop.table.settings)
    assert (agent.sample_ratio, agent.max_events, agent.exclude) == (0.5, 16, ("shop.health",))
    assert agent.parent_based and agent.burst == 0.0
    assert plain.selected and plain.table is not None and plain.table.settings is None
    # AND the reason shown says which settings apply
    assert edge.reason == (
        "selected by [env=TIER=edge; sampler=traceidratio, sampler_arg=0.01, burst=0.05]"
    )
    assert plain.reason == "selected by [env=ASYNC_INSPECT_ENABLE=1]"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            "env = 'A=1'\nsettings = { endpoint = 'http://x:4317' }",
            "c.toml: select[0].settings has setting(s) that are not per process: endpoint",
        ),
        (
            "env = 'A=1'\nsettings = { sampler_arg = 2 }",
            "invalid c.toml: select[0].settings: sampler_arg='2': must be a number from 0 to 1",
        ),
        (
            "env = 'A=1'\nsettings = { burst = 0.1 }",
            "c.toml: select[0].settings: bursts of 0.1s need a sampling ratio between 0 and 1",
        ),
        ("env = 'A=1'\nsettings = 3", "c.toml: select[0].settings must be a non-empty table"),
        ("settings = { max_events = 3 }", "c.toml: select[0] must match on at least one of"),
    ],
)
def test_bad_table_settings_are_refused_at_start(table: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(f"[[select]]\n{table}\n")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_a_table_can_record_all_the_time_where_the_daemon_records_in_bursts() -> None:
    # GIVEN a daemon recording 1 % of the time, and a table for one service
    selection, _ = load(
        'sampler = "traceidratio"\nsampler_arg = 0.01\nburst = 0.05\n'
        '[[select]]\nservice = "payments"\nsettings = { burst = false, sampler_arg = 1 }\n'
        '[[select]]\nservice = "*"\n'
    )
    # WHEN a process of that service and another are decided
    payments = selection.decide(process(1), None, "payments").table
    other = selection.decide(process(2), None, "search").table
    # THEN that service's agent records every trace, all the time; the others in bursts
    assert payments is not None and payments.settings is not None
    agent = agent_settings_from(payments.settings)
    assert (agent.burst, agent.sample_ratio) == (0.0, 1.0)
    assert other is not None and other.settings is None


def test_a_tables_rules_come_before_the_daemons() -> None:
    # GIVEN a daemon rule for every health check, and a table with rules of its own
    selection, _ = load(
        '[[rules]]\nmatch = "*:health*"\nexclude = true\n'
        '[[select]]\nservice = "shop"\n'
        '[[select.settings.rules]]\nmatch = "shop.api:health"\nname = "probe"\n'
        '[[select.settings.rules]]\nmatch = "shop.pay:*"\nsample_rate = 1.0\n'
    )
    # WHEN a process of that service is decided
    decision = selection.decide(process(1), None, "shop")
    # THEN the table's rules come first and the daemon's still follow
    assert decision.table is not None and decision.table.settings is not None
    rules = decision.table.settings.rules
    assert [rule.match for rule in rules] == ["shop.api:health", "shop.pay:*", "*:health*"]
    assert rules[0].name == "probe" and rules[1].sample_rate == 1.0 and rules[2].exclude
    agent = agent_settings_from(decision.table.settings)
    assert [rule["match"] for rule in agent.rules] == [rule.match for rule in rules]
    assert decision.reason == "selected by [service=shop; rules=2]"
    # AND a mistake in one of them names it
    with pytest.raises(ConfigError, match=r"select\[0\]\.settings: rules\[0\] has unknown"):
        load('[[select]]\nservice = "shop"\n[[select.settings.rules]]\nmatch = "a"\nnam = "b"\n')


def test_exclusion_tables_take_no_settings() -> None:
    with pytest.raises(ConfigError, match=r"exclude_processes\[0\] has unknown selector key"):
        load("[[exclude_processes]]\nenv = 'A=1'\nsettings = { max_events = 3 }\n")
