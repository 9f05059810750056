"""The tables' frozen records behave as the frozen dataclasses they replace."""

import pytest

from pyxen.ops.record import Record


class R(Record):
    a: str
    b: int = 2
    c: tuple = ()


def test_constructor_defaults_equality_hash_repr():
    assert R("x") == R(a="x", b=2) == R("x", 2, ())
    assert R("x") != R("x", 3)
    assert hash(R("x")) == hash(R(a="x"))
    assert repr(R("x", c=(1,))) == "R(a='x', b=2, c=(1,))"
    assert {R("x"), R("x")} == {R("x")}


@pytest.mark.parametrize("call", [lambda: R(), lambda: R("x", 1, (), 4), lambda: R("x", d=1),
                                  lambda: R("x", a="y")])
def test_bad_arguments_are_type_errors(call):
    with pytest.raises(TypeError):
        call()


def test_frozen():
    r = R("x")
    with pytest.raises(AttributeError):
        r.a = "y"
    with pytest.raises(AttributeError):
        del r.b
