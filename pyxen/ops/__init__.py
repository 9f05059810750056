"""The operation tables: what xend's HTTP API offers (``table``), what xm's
subcommands are (``commands``), and the one validator both sides run
(``validate``).

Everything here is plain data and pure functions: xm imports it without
importing anything of xend, the hypervisor, networking or storage, so that
routing, validation, ``/api/openapi.json``, ``xm help`` and the generated
xm commands all come from one description.

Adding an operation: one ``Op`` entry in ``table.OPS`` (route, typed
parameters, handler name, job rules, schemathesis class) and its handler,
an ``async def name(call)`` in the ``pyxen.xend.handlers`` module of its
concern, returning a dict.  For xm, one ``Command`` in ``commands.COMMANDS``:
with ``send`` when it only passes its words on (no code), with ``run``
naming its function otherwise.  Routing, validation, /api/openapi.json,
xm help, the fuzz and schemathesis targets follow; ``make man`` regenerates
the man pages and completion, and tests/unit/test_optable.py checks that
nothing exists that the tables do not describe.
"""
