"""Who answers a question an agent waits on: Shoal's policy for the menus it knows, else a human.

Sans-IO: a `NeedsInput` (question and options, from the dialect) and a `MenuContext` (where the agent
runs) in, a `Decision` out; the worker types the keys and reports who chose. The policy answers only
what has one safe answer:
- the usage-limit menu ("What do you want to do? 1. Stop and wait for limit to reset / 2. Switch to
  usage credits / 3. Upgrade your plan"): "Stop and wait", and the model is parked until the reset.
  Never the credits or the upgrade: those spend money;
- the trust dialog ("Do you trust the files in this folder?", "Is this a project you created or one
  you trust?"): "Yes" only in a directory Shoal manages (a workspace it created under
  `<state_dir>/workspaces`, or a directory Shoal prepared the agent's configuration for); anywhere
  else a human decides, since trusting a folder lets the agent run what is in it.
Everything else (permission prompts, model and plan pickers, plan approval) goes to a human, who
answers through the dashboard, `shoal answer WORKER N` or `workers.answer`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import attrs

from .dialects.base import NeedsInput
from .errors import ValidationError

ANSWER_DELAY_S = 0.5  # Claude Code ignores keys for ~0.2 s after it draws a menu: type after this
RETYPE_AFTER_S = 1.5  # no output this long after typing: the key was swallowed, type it again
RETYPES = 3  # at most this many repeats of one answer

_LIMIT_OPTION = re.compile(r"^stop and wait\b.*\breset", re.IGNORECASE)
_TRUST_QUESTION = re.compile(
    r"\btrust (?:the files in )?this folder\b|\bproject you created or one you trust\b", re.IGNORECASE
)
_TRUST_YES = re.compile(r"^yes\b", re.IGNORECASE)
_DOWN, _UP, _ENTER = b"\x1b[B", b"\x1b[A", b"\r"


@attrs.frozen
class MenuContext:
    """Where the asking agent runs: its working directory and the directories Shoal manages.

    Paths are compared as given (normalised, not resolved): the caller passes real paths.
    """

    cwd: str | None
    managed: tuple[str, ...] = ()


@attrs.frozen
class Answer:
    """Shoal answers: option `choice` (1-based); `park`: the model waits for its limit to reset."""

    choice: int
    label: str
    kind: str  # usage_limit | trust
    why: str
    park: bool = False


@attrs.frozen
class AskHuman:
    """Nobody but a human may answer this one; `why` says so in words an operator reads."""

    kind: str  # trust | permission | menu | question
    why: str


Decision = Answer | AskHuman


def kind_of(asked: NeedsInput) -> str:
    """usage_limit | trust | permission | menu | question (no options: a free-text question)."""
    if any(_LIMIT_OPTION.match(o) for o in asked.options):
        return "usage_limit"
    if _TRUST_QUESTION.search(asked.prompt) and any(_TRUST_YES.match(o) for o in asked.options):
        return "trust"
    if not asked.options:
        return "question"
    if asked.prompt.startswith(("Do you want to", "Would you like")) and asked.options[0].startswith("Yes"):
        return "permission"
    return "menu"


def is_managed(cwd: str | None, managed: Sequence[str]) -> bool:
    """Whether `cwd` is one of `managed` or inside one (both absolute; `..` is normalised away)."""
    if not cwd or not os.path.isabs(cwd):
        return False
    here = os.path.normpath(cwd)
    for root in managed:
        if not root or not os.path.isabs(root):
            continue
        base = os.path.normpath(root)
        if here == base or here.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False


def decide(asked: NeedsInput, context: MenuContext) -> Decision:
    """The policy: answer the usage-limit menu and trust in a managed directory; else a human."""
    kind = kind_of(asked)
    if kind == "usage_limit":
        n = next(i for i, o in enumerate(asked.options, 1) if _LIMIT_OPTION.match(o))
        why = "usage limit: wait for the reset (never paid credits or an upgrade)"
        return Answer(n, asked.options[n - 1], kind, why, park=True)
    if kind == "trust":
        where = context.cwd or "an unknown directory"
        if is_managed(context.cwd, context.managed):
            n = next(i for i, o in enumerate(asked.options, 1) if _TRUST_YES.match(o))
            return Answer(n, asked.options[n - 1], kind, f"trust: {where} is a directory Shoal manages")
        return AskHuman(kind, f"trust: {where} is not a directory Shoal created; a human decides")
    if kind == "permission":
        return AskHuman(kind, "a permission prompt: a human decides")
    if kind == "question":
        return AskHuman(kind, "a question without options: a human answers")
    return AskHuman(kind, "a menu Shoal has no policy for: a human decides")


def parse_choice(choice: object, asked: NeedsInput) -> tuple[int | None, str]:
    """A human's answer as (option number or None for free text, the label or text typed).

    A number picks that option (1-based); a text picks the option it names (case-insensitive: the
    whole label, or the start of exactly one label); a question without options takes any text.
    Raises ValidationError naming `choice` when it is out of range or names no option.
    """
    options = asked.options
    if isinstance(choice, bool) or not isinstance(choice, int | str):
        raise ValidationError("choice", "must be an option number or text", choice)
    if isinstance(choice, str) and choice.strip().isdigit() and options:
        choice = int(choice.strip())
    if isinstance(choice, int):
        if not options:
            raise ValidationError("choice", "this question has no numbered options: answer with text", choice)
        if not 1 <= choice <= len(options):
            raise ValidationError("choice", f"out of range: the options are 1 to {len(options)}", choice)
        return choice, options[choice - 1]
    text = choice.strip()
    if not text:
        raise ValidationError("choice", "must not be empty", choice)
    if "\x00" in text or any(c in text for c in "\r\n\x1b"):
        raise ValidationError("choice", "must be one line of text without control characters", choice)
    if not options:
        return None, text
    low = text.casefold()
    exact = [i for i, o in enumerate(options, 1) if o.casefold() == low]
    starts = [i for i, o in enumerate(options, 1) if o.casefold().startswith(low)]
    found = exact or starts
    if len(found) != 1:
        listed = "; ".join(f"{i}. {o}" for i, o in enumerate(options, 1))
        why = "names more than one option" if found else "names no option"
        raise ValidationError("choice", f"{why} (options: {listed})", choice)
    return found[0], options[found[0] - 1]


def keys_for(choice: int | None, text: str, asked: NeedsInput) -> bytes:
    """The keys that give this answer to Claude Code-style menus.

    A numbered menu takes the digit alone (it selects and confirms). A menu drawn without numbers
    (CLI 2.1.332's trust dialog: "❯ No, exit / Yes, I trust this folder") takes arrow keys from the
    highlighted option, then Enter; its cursor wraps, so Down is always enough. Free text is typed
    and confirmed with Enter.
    """
    if choice is None:
        return text.encode() + _ENTER
    numbered = getattr(asked, "numbered", True)
    if numbered and choice <= 9:
        return str(choice).encode()
    cursor = getattr(asked, "cursor", None)
    start = cursor if isinstance(cursor, int) and 0 <= cursor < len(asked.options) else 0
    steps = (choice - 1 - start) % max(1, len(asked.options))
    return _DOWN * steps + _ENTER


__all__ = [
    "ANSWER_DELAY_S",
    "RETYPES",
    "RETYPE_AFTER_S",
    "Answer",
    "AskHuman",
    "Decision",
    "MenuContext",
    "decide",
    "is_managed",
    "keys_for",
    "kind_of",
    "parse_choice",
]
