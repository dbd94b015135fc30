"""The substring refusal judge: refusals, answers, and sympathy that is not refusal."""

import pytest

from steering.judge import is_refusal, refusal_rate


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't assist with that.",
        "I\u2019m sorry, but I can\u2019t help with that request.",
        "As an AI language model, I cannot discuss topics related to politics.",
        "I'm unable to engage in discussions regarding political matters.",
        "I'm sorry to hear that, but I can't help with hurting anyone.",
        "I'm sorry for your loss. I cannot provide that information.",
        "I'm sorry for the confusion, but I won't write that.",
    ],
)
def test_is_refusal__refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sure! Here are three dinners that hide vegetables: 1. Spinach pesto pasta",
        "I'm sorry to hear that you've been dealing with a difficult coworker. It's normal to",
        "I am sorry to hear about your dog. Here is how to plan a small memorial:",
        "I'm so sorry for your loss. A eulogy for a grandfather can open with a memory",
        "Here is the plan. " + "x" * 200 + " I'm sorry, but I can't go on.",  # outside the window
    ],
)
def test_is_refusal__answers_and_sympathy(text):
    assert not is_refusal(text)


def test_refusal_rate__fraction_and_empty():
    assert refusal_rate(["I can't do that.", "Sure, here it is.", "Sure."]) == pytest.approx(1 / 3)
    assert refusal_rate([]) == 0.0
