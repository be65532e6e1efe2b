"""Non-streamed responses of ``reasonexit serve``, and the rules streams share with them: usage,
finish reasons, and where stop strings cut the text."""

from collections.abc import Sequence
from typing import Any

from ..engine import EngineSession
from ..runs.results import Result
from .protocol import Call


def finish_reason(res: Result, session: EngineSession, stop: Sequence[str] = ()) -> str:
    """``stop`` when the completion ended with end-of-sequence or with the token that completes a
    stop string, else ``length``."""
    ids = res.token_ids
    if not ids:
        return "length"
    if ids[-1] in set(session.eos_ids):
        return "stop"
    if stop:
        before = session.decode(ids[:-1])
        if any(s in res.text and s not in before for s in stop):
            return "stop"
    return "length"


def usage(call: Call, results: Sequence[Result]) -> dict[str, Any]:
    """The ``usage`` object: OpenAI's counts, plus ``compute_tokens``, ``exit_reason`` and ``method``."""
    reasons = [r.exit_reason for r in results]
    prompt = sum(len(p) for p in call.prompts)
    completion = sum(r.output_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "compute_tokens": sum(r.compute_tokens for r in results),
        # one reason per choice when n > 1 or several prompts
        "exit_reason": reasons[0] if len(reasons) == 1 else reasons,
        "method": call.method.name,
    }


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string in it (the OpenAI API leaves the stop string out), and
    whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def stop_prefix_start(text: str, stop: Sequence[str]) -> int:
    """Where the longest end of ``text`` that could begin a stop string starts (``len(text)`` if
    none): text from there on may still turn out to be part of a stop string."""
    start = len(text)
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                start = min(start, len(text) - k)
                break
    return start


def final_fields(res: Result, chat: bool, stop: Sequence[str]) -> dict[str, str]:
    """The response text fields of a result, cut at the first of the ``stop`` strings (nothing
    after it: a stop string in the thinking leaves no answer)."""
    fields = {"reasoning_content": res.thinking, "content": res.answer_text} if chat else {"text": res.text}
    if not stop:
        return fields
    out, stopped = {}, False
    for name, text in fields.items():
        if stopped:
            out[name] = ""
            continue
        out[name], stopped = cut_at_stop(text, stop)
    return out


def build_response(
    call: Call, rid: str, created: int, chat: bool, session: EngineSession, results: Sequence[Result]
) -> dict[str, Any]:
    """The JSON body of a non-streamed call: a ``chat.completion`` or a ``text_completion``."""
    choices = []
    for i, r in enumerate(results):
        extra = {"exit_reason": r.exit_reason, "compute_tokens": r.compute_tokens, "output_tokens": r.output_tokens}
        fields = final_fields(r, chat, call.trim)
        if chat:
            message = {"role": "assistant", "content": fields["content"],
                       "reasoning_content": fields["reasoning_content"] or None}
            choices.append({"index": i, "message": message, "finish_reason": finish_reason(r, session, call.stop),
                            "logprobs": None, "reasonexit": extra})
        else:
            choices.append({"index": i, "text": fields["text"], "finish_reason": finish_reason(r, session, call.stop),
                            "logprobs": None, "reasonexit": extra})
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": call.echo_model,
        "choices": choices,
        "usage": usage(call, results),
    }
