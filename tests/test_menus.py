"""protocols/menus.py: the policy over the real menu screens of the corpus (issue 16, menus).

Each screen is fed to the prompt dialect as the worker would; the question and options it parses
go to `decide`, so these tests break when either the parser or the policy drifts from what Claude
Code really prints.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import FIXTURES

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.base import NeedsInput
from shoal.protocols.errors import ValidationError
from shoal.protocols.menus import (
    Answer,
    AskHuman,
    MenuContext,
    decide,
    is_managed,
    keys_for,
    kind_of,
    parse_choice,
)
from shoal.protocols.tasks import Assignment

WALL = 1_780_000_000.0
MANAGED = MenuContext(cwd="/state/workspaces/w1", managed=("/state/workspaces",))
UNMANAGED = MenuContext(cwd="/home/someone/project", managed=("/state/workspaces",))
ENTRIES = {e["file"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())["files"]}


def asked_on(name: str, *, task: bool = True) -> NeedsInput:
    """The (last) question the prompt dialect reads on the screen `name`."""
    dialect = make_dialect("prompt", {}, wall_clock=lambda: WALL)
    if task:
        dialect.start_task(Assignment(task_id="t1", attempt=1, prompt="Fix it"), 1.0)
    signals = dialect.feed((FIXTURES / name).read_bytes(), 1.0)
    asks = [s for s in signals if isinstance(s, NeedsInput)]
    assert asks, f"no question read on {name}"
    return asks[-1]


LIMIT_MENUS = [f for f, e in ENTRIES.items() if e.get("answer") == 1 and e.get("rate_limited")]
TRUST = [f for f, e in ENTRIES.items() if e.get("trust_dialog")]
HUMAN = [
    f
    for f, e in ENTRIES.items()
    if e.get("expect") == "needs_input" and f not in LIMIT_MENUS and f not in TRUST
]


def test_the_corpus_has_each_kind() -> None:
    assert len(LIMIT_MENUS) >= 2 and len(TRUST) >= 3 and len(HUMAN) >= 4


@pytest.mark.parametrize("name", LIMIT_MENUS)
def test_usage_limit_menu_waits_for_the_reset_and_parks(name: str) -> None:
    asked = asked_on(name)
    assert asked.prompt == ENTRIES[name]["question"]
    for context in (MANAGED, UNMANAGED):
        decision = decide(asked, context)
        assert isinstance(decision, Answer), decision
        assert decision.choice == 1 and decision.label == "Stop and wait for limit to reset"
        assert decision.park and decision.kind == "usage_limit"


def test_usage_limit_option_is_found_wherever_it_is() -> None:
    asked = NeedsInput(
        "What do you want to do?", ("Switch to usage credits", "Stop and wait for limit to reset")
    )
    decision = decide(asked, UNMANAGED)
    assert isinstance(decision, Answer) and decision.choice == 2


@pytest.mark.parametrize("name", TRUST)
def test_trust_is_yes_only_in_a_managed_directory(name: str) -> None:
    asked = asked_on(name, task=False)
    assert kind_of(asked) == "trust"
    yes = decide(asked, MANAGED)
    assert isinstance(yes, Answer) and yes.label.startswith("Yes") and not yes.park
    assert yes.choice == next(i for i, o in enumerate(asked.options, 1) if o.startswith("Yes"))
    human = decide(asked, UNMANAGED)
    assert isinstance(human, AskHuman) and human.kind == "trust"
    assert "/home/someone/project" in human.why
    assert isinstance(decide(asked, MenuContext(cwd=None, managed=("/state/workspaces",))), AskHuman)


@pytest.mark.parametrize("name", HUMAN)
def test_every_other_menu_goes_to_a_human(name: str) -> None:
    asked = asked_on(name)
    for context in (MANAGED, UNMANAGED):
        assert isinstance(decide(asked, context), AskHuman), asked


def test_kinds() -> None:
    assert kind_of(asked_on("corpus/tui-permission-bash-v2.1.29-1.txt")) == "permission"
    assert kind_of(asked_on("corpus/tui-model-picker-v2.1.29-1.txt")) == "menu"
    assert kind_of(NeedsInput("Enter your name?")) == "question"


@pytest.mark.parametrize(
    ("cwd", "managed", "expected"),
    [
        ("/s/workspaces/w1", ("/s/workspaces",), True),
        ("/s/workspaces", ("/s/workspaces/",), True),
        ("/s/workspaces/w1/../../etc", ("/s/workspaces",), False),
        ("/s/workspaces-evil/w1", ("/s/workspaces",), False),
        ("relative/dir", ("relative",), False),
        (None, ("/s",), False),
        ("/anywhere", (), False),
        ("/p/work", ("/p/work", "/s/workspaces"), True),
    ],
)
def test_is_managed(cwd: str | None, managed: tuple[str, ...], expected: bool) -> None:
    assert is_managed(cwd, managed) is expected


PICKER = NeedsInput("Select model", ("Default (recommended)", "Opus", "Haiku"))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [(2, (2, "Opus")), ("3", (3, "Haiku")), ("opus", (2, "Opus")), ("Default", (1, "Default (recommended)"))],
)
def test_parse_choice(choice: Any, expected: tuple[int, str]) -> None:
    assert parse_choice(choice, PICKER) == expected


@pytest.mark.parametrize("choice", [0, 4, -1, "", "Sonnet", True, None, 2.0, "a\nb"])
def test_parse_choice_refuses_naming_the_field(choice: Any) -> None:
    with pytest.raises(ValidationError) as err:
        parse_choice(choice, PICKER)
    assert err.value.field == "choice"


def test_parse_choice_ambiguous_text_lists_the_options() -> None:
    asked = NeedsInput("Do you want to proceed?", ("Yes", "Yes, and always allow", "No"))
    assert parse_choice("yes", asked) == (1, "Yes")  # the whole label wins over a prefix
    with pytest.raises(ValidationError, match="more than one option"):
        parse_choice("Yes,", NeedsInput("q?", ("Yes, once", "Yes, always")))


def test_free_text_question() -> None:
    asked = NeedsInput("What is the branch name?")
    assert parse_choice("main", asked) == (None, "main")
    with pytest.raises(ValidationError, match="no numbered options"):
        parse_choice(1, asked)
    assert keys_for(None, "main", asked) == b"main\r"


def test_keys_numbered_menu_is_the_digit() -> None:
    assert keys_for(2, "Opus", PICKER) == b"2"


def test_keys_for_a_menu_drawn_without_numbers_are_arrows_from_the_cursor() -> None:
    trust = asked_on("corpus/real-tui-trust-dialog-no-numbers-v2.1.332.ansi", task=False)
    assert trust.options == ("No, exit", "Yes, I trust this folder")
    assert not trust.numbered and trust.cursor == 0
    decision = decide(trust, MANAGED)
    assert isinstance(decision, Answer) and decision.choice == 2
    assert keys_for(decision.choice, decision.label, trust) == b"\x1b[B\r"  # Down, Enter
    assert keys_for(1, "No, exit", trust) == b"\r"
    wrapped = NeedsInput("Pick?", ("a", "b", "c"), numbered=False, cursor=2)
    assert keys_for(1, "a", wrapped) == b"\x1b[B\r"  # the cursor wraps: Down from the last is the first
