"""``reasonexit serve``: an OpenAI-compatible HTTP server whose every method exits early.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text format). Each request runs as one
controller (:func:`reasonexit.runs.runner.solve_job`) per choice on the shared engine session, the
same one the CLI and the Python API use, so ``usage`` is the same honest accounting: ``prompt_tokens``,
``completion_tokens`` (what the user gets), plus ``compute_tokens`` (everything decoded: probes,
branches, discarded continuations) and ``exit_reason``.

The method and its options go in an extra body field, ``"reasonexit": {"method": "deer",
"threshold": 0.9}``, checked by the same declarations as the CLI (:func:`make_method`); the
server's flags are the defaults. The thinking is returned in ``reasoning_content`` and the answer
in ``content``.

Streaming (``stream: true``): a token is sent once it is final. Every choice's controller gets a
token sink (:attr:`~reasonexit.methods.base.Context.token_sink`): ``vanilla`` and ``budget`` hand
over every token as it is decoded; DEER and FlashThink (:mod:`reasonexit.methods.early_exit`)
stream the thinking up to the earliest cut a pending or future check could still take, and on exit
the closing tokens and the answer as it decodes; ``ffs`` (and ``majority``) cannot stream before a
winner exists, and stream the winner's completion once it has won. Thinking goes out as
``reasoning_content`` deltas and the answer after the end marker as ``content`` deltas (chat;
completions stream ``text``). Then a chunk with ``finish_reason`` per choice, a ``usage`` chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``. The deltas add up to the
non-streamed response of the same request and seed. A client that disconnects (streaming or not)
cancels its controllers, which aborts every engine request of the call.

``stop`` (a string or a list of strings) goes to vLLM for every request whose tokens the user gets:
vanilla's and budget's request, the early-exit methods' main trace (thinking included, as vLLM
applies stop strings to the reasoning too) and their answer after an exit, and each branch of
``ffs``/``majority``; never to DEER's probes or FlashThink's verifier calls. The completion ends
with the token that completes the stop string and keeps it (reasonexit works in token ids: as
vLLM's ``include_stop_str_in_output``), and ``finish_reason`` is ``stop``. ``logprobs`` is a 400.

Parts: :mod:`~reasonexit.serve.app` (routes), :mod:`~reasonexit.serve.serving` (the serving object),
:mod:`~reasonexit.serve.protocol` (request models), :mod:`~reasonexit.serve.responses`,
:mod:`~reasonexit.serve.streaming`, :mod:`~reasonexit.serve.middleware` (auth, metrics) and
:mod:`~reasonexit.serve.server` (uvicorn on the engine loop).
"""

from .app import create_app
from .server import RunningServer, ServeOptions, serve, start_server

__all__ = ["RunningServer", "ServeOptions", "create_app", "serve", "start_server"]
