"""Frozen records for the operation tables, without :mod:`dataclasses`.

xm loads the tables on every start, and importing ``dataclasses`` (it
pulls in ``inspect``) cost 7-11 ms of a ~20 ms budget (bench/README.md,
xm latency).  A :class:`Record` subclass declares its fields as annotated
class attributes, as a frozen dataclass would, and gets the same
constructor (positional or keyword, defaults from the class), equality,
hash, repr, and refusal to be changed.
"""

from __future__ import annotations


class Record:
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        ann = cls.__dict__.get("__annotations__", {})
        cls._fields = tuple(ann)
        cls._defaults = {n: cls.__dict__[n] for n in ann if n in cls.__dict__}

    def __init__(self, *args, **kw):
        name = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{name}() takes at most {len(self._fields)} positional arguments")
        values = dict(zip(self._fields, args))
        for k, v in kw.items():
            if k not in self._fields:
                raise TypeError(f"{name}() got an unexpected keyword argument {k!r}")
            if k in values:
                raise TypeError(f"{name}() got multiple values for argument {k!r}")
            values[k] = v
        for f in self._fields:
            if f not in values:
                if f not in self._defaults:
                    raise TypeError(f"{name}() missing required argument {f!r}")
                values[f] = self._defaults[f]
            object.__setattr__(self, f, values[f])

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {key!r}")

    def __delattr__(self, key):
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {key!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash((type(self).__name__,) + self._values())

    def __repr__(self):
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"
