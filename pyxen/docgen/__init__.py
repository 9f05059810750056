"""Man pages and bash completion, generated from pyxen's own tables: the xm
command table (``pyxen.ops.commands``), the domain-config variables
(``pyxen.config.options``), the xend options (``pyxen.config.xendconfig``)
and the argument parsers of xentop and pyxen.

``python -m pyxen.docgen`` (``make man``) writes them into
``pyxen/data/man`` (``<name>.<section>``) and ``pyxen/data/completion``
(``xm``); ``--check`` says which committed file is stale instead.
"""
