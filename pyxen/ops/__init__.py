"""The operation tables: what xend's HTTP API offers (``table``), what xm's
subcommands are (``commands``), and the one validator both sides run
(``validate``).

Everything here is plain data and pure functions: xm imports it without
importing anything of xend, the hypervisor, networking or storage, so that
routing, validation, ``/api/openapi.json``, ``xm help`` and the generated
xm commands all come from one description.
"""
