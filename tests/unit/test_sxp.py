"""Tests for pyxen.config.sxp: Xen 3.x SXP reading, writing and layout."""

import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from pyxen.config import sxp
from pyxen.config.sxp import SxpError


def err(text):
    with pytest.raises(SxpError) as info:
        sxp.parse(text)
    return info.value


# --- reading: tokens ---------------------------------------------------------

def test_atoms_and_lists():
    assert sxp.parse("(domain (domid 15) (name a-b.c))") == [
        ["domain", ["domid", "15"], ["name", "a-b.c"]]]
    assert sxp.parse("a b\tc") == ["a", "b", "c"]
    assert sxp.parse("()") == [[]]
    assert sxp.parse("") == []


def test_every_atom_is_a_string():
    assert sxp.parse("(memory 256) (cpu_weight 1.5) -3") == [
        ["memory", "256"], ["cpu_weight", "1.5"], "-3"]


def test_all_whitespace_kinds():
    assert sxp.parse(" \t\n\v\f\ra\r\n(b\vc\fd)") == ["a", ["b", "c", "d"]]


def test_comments():
    assert sxp.parse("# whole line\n(a # to end of line\n b)") == [["a", "b"]]
    # A "#" also ends an atom.
    assert sxp.parse("abc#comment\ndef") == ["abc", "def"]
    assert sxp.parse("(a)# trailing, no newline") == [["a"]]
    # Inside a string it is just a character.
    assert sxp.parse("'a#b'") == ["a#b"]


def test_quotes_inside_an_atom_are_literal():
    assert sxp.parse("it's a\"b") == ["it's", 'a"b']


def test_separators_end_atoms_and_start_atoms_like_xen():
    assert sxp.parse("a[b]c") == ["a", "[b", "]c"]
    assert sxp.parse("[ x ]") == ["[", "x", "]"]
    assert sxp.parse("{}<>!;") == ["{", "}", "<", ">", "!", ";"]
    assert sxp.parse("(a!b;c)") == [["a", "!b", ";c"]]
    # "(" and ")" are never part of an atom.
    assert sxp.parse("a(b)c") == ["a", ["b"], "c"]


def test_non_ascii_printable_atoms():
    assert sxp.parse("(name café) ①") == [["name", "café"], "①"]


# --- reading: strings and escapes ---------------------------------------------

def test_both_quote_styles():
    assert sxp.parse("'a b' \"c d\"") == ["a b", "c d"]
    assert sxp.parse("'say \"hi\"' \"it's\"") == ['say "hi"', "it's"]
    assert sxp.parse("''") == [""]
    assert sxp.parse("'a\nb'") == ["a\nb"]


def test_named_escapes():
    assert sxp.from_string(r"'\a\b\t\n\v\f\r\\\'\"'") == "\a\b\t\n\v\f\r\\'\""


def test_hex_escapes():
    assert sxp.from_string(r"'\x41\x7e\xff\xAb'") == "A~\xff\xab"
    # One digit is enough when a non-hex character follows.
    assert sxp.from_string(r"'\x4g'") == "\x04g"
    assert sxp.from_string(r"'\x414'") == "A4"


def test_octal_escapes():
    assert sxp.from_string(r"'\101\0\7\377'") == "A\x00\x07\xff"
    assert sxp.from_string(r"'\18'") == "\x018"
    assert sxp.from_string(r"'\1012'") == "A2"


def test_unknown_escape_quirk():
    # Xen: an unknown escape leaves a backslash and drops the character.
    assert sxp.from_string(r"'a\qb'") == "a\\b"
    assert sxp.from_string(r"'\z\%'") == "\\\\"


def test_unicode_escapes_extension():
    assert sxp.from_string(r"'\u00e9\u2028\U0001F600\ud800'") == "é\u2028😀\ud800"
    # Not a full code point: Xen's unknown-escape rule applies.
    assert sxp.from_string(r"'C:\Users'") == "C:\\sers"
    assert sxp.from_string(r"'\u12'") == "\\12"
    assert sxp.from_string(r"'\U00110000'") == "\\00110000"


def test_control_characters_inside_strings_and_atoms_are_literal():
    assert sxp.parse("'a\x00\x04b' x\x01y") == ["a\x00\x04b", "x\x01y"]


def test_control_d_is_end_of_input_at_token_start():
    assert sxp.parse("(a) b \x04 (not parsed") == [["a"], "b"]
    # Inside an atom it is just a character, as in Xen.
    assert sxp.parse("b\x04") == ["b\x04"]
    e = err("(a \x04)")
    assert e.message == "unexpected EOF: this '(' is never closed"


# --- reading: errors ------------------------------------------------------------

def test_error_is_value_error_with_position():
    e = err("(a)\n  )")
    assert isinstance(e, ValueError)
    assert (e.message, e.line, e.column) == ("syntax error: )", 2, 3)
    assert str(e) == "syntax error: ) at line 2, column 3"
    assert str(e.with_file("/etc/xen/vm")) == "/etc/xen/vm:2: syntax error: )"


def test_invalid_character():
    e = err("(a\n b \x01)")
    assert str(e) == "invalid character: code 1 at line 2, column 4"
    assert err("\x7f").message == "invalid character: code 127"
    assert err("\u00a0").message == "invalid character: code 160"


@pytest.mark.parametrize("text", ["(a (b)", "(", "(a # comment\n", "(a # comment", "(a\n(b (c))\n"])
def test_unexpected_eof_names_the_open_parenthesis(text):
    assert err(text).message == "unexpected EOF: this '(' is never closed"


@pytest.mark.parametrize("text", ["'abc", "'abc\\", "'\\x", "(a \"b c)"])
def test_unexpected_eof_in_a_string_names_where_it_opened(text):
    assert err(text).message == "unexpected EOF: the string opened here is never closed"


@pytest.mark.parametrize("text, line, column", [
    ("(a\n (b c)\n", 1, 1),                 # the outer one is left open
    ("(vm (name a)\n  (image (linux)\n", 2, 3),
    ("(a)\n(b\n(c)\n(d)", 2, 1),
    ("(a 'x\ny", 1, 4),
])
def test_unexpected_eof_position_is_the_unclosed_opener(text, line, column):
    e = err(text)
    assert (e.line, e.column) == (line, column)
    assert str(e.with_file("/etc/xen/vm")).startswith(f"/etc/xen/vm:{line}: unexpected EOF")


def test_bad_numeric_escapes():
    e = err("'ab\\400'")
    assert (e.message, e.column) == ("invalid octal escape: out of range 400", 4)
    assert err("'\\777'").message == "invalid octal escape: out of range 777"
    assert err("'\\xg'").message == "invalid hex escape"


@pytest.mark.parametrize("text", ["(" * 100000, "(" * 100000 + ")" * 100000,
                                  "(image " * (sxp.MAX_DEPTH + 1) + ")" * (sxp.MAX_DEPTH + 1),
                                  "(vm (image " + "(a " * 70 + "))"])
def test_deep_nesting_is_one_error_not_a_recursion(text):
    e = err(text)
    assert e.message == f"nested deeper than {sxp.MAX_DEPTH} levels"
    assert e.line == 1


def test_nesting_up_to_the_limit_reads_and_writes_back():
    text = "(" * sxp.MAX_DEPTH + ")" * sxp.MAX_DEPTH
    value = sxp.from_string(text)
    assert sxp.to_string(value) == text
    depth = 0
    while value:
        value, depth = value[0], depth + 1
    assert depth == sxp.MAX_DEPTH - 1


def test_from_string():
    assert sxp.from_string("(a) (b)") == ["a"]
    assert sxp.from_string("x") == "x"
    with pytest.raises(SxpError, match="no value"):
        sxp.from_string("  # nothing\n")
    with pytest.raises(SxpError):  # later values are still checked
        sxp.from_string("(a) )")


def test_parse_file(tmp_path):
    good = tmp_path / "vm.sxp"
    good.write_text("(vm (name é))\n", encoding="utf-8")
    assert sxp.parse_file(good) == [["vm", ["name", "é"]]]
    bad = tmp_path / "bad.sxp"
    bad.write_text("(vm\n (name x)))\n")
    with pytest.raises(SxpError) as info:
        sxp.parse_file(bad)
    assert str(info.value) == f"{bad}:2: syntax error: )"
    binary = tmp_path / "bin.sxp"
    binary.write_bytes(b"(a\n b\xff)")
    with pytest.raises(SxpError) as info:
        sxp.parse_file(binary)
    assert (info.value.line, info.value.column) == (2, 3)
    assert "invalid UTF-8 byte 0xff" in str(info.value)


def test_parse_wants_str():
    with pytest.raises(TypeError):
        sxp.parse(b"(a)")


# --- writing ---------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (["kernel", ""], "(kernel )"),
    (["a", "b", "c"], "(a b c)"),
    ([], "()"),
    ("@", "@"),
    (["@", ["id", "1"]], "(@ (id 1))"),
    ("abc123", "abc123"),
    ("café", "café"),
    ("/etc/xen/scripts/vif-bridge", "/etc/xen/scripts/vif-bridge"),
    ("00:16:3e:1b:8b:d2", "00:16:3e:1b:8b:d2"),
    ("a.b-c_d:e/f~", "a.b-c_d:e/f~"),
    ("/dev/hda1 ro", "'/dev/hda1 ro'"),
    ("phy:/dev/sda,hda1,w", "'phy:/dev/sda,hda1,w'"),
    ("@@", "'@@'"),
    ("a+b", "'a+b'"),
    ("it's", "\"it's\""),
    ("x\"y'z", "'x\"y\\'z'"),
    ("tab\there\n", "'tab\\there\\n'"),
    ("caf é", "'caf é'"),
    ("\x00\u2028", "'\\x00\\u2028'"),
    (15, "15"),
    (-3, "-3"),
    (1.5, "1.5"),
    (True, "1"),
    (False, "0"),
    (("a", ("b", 2)), "(a (b 2))"),
])
def test_to_string(value, text):
    assert sxp.to_string(value) == text


@pytest.mark.parametrize("value", [None, {"a": 1}, object(), ["ok", None], b"x"])
def test_to_string_rejects_other_types(value):
    with pytest.raises(TypeError, match="sxp cannot write"):
        sxp.to_string(value)


# --- pretty layout ------------------------------------------------------------------

def _vif():
    return ["device", ["vif",
                       ["bridge", "eth0"],
                       ["mac", "00:16:3e:1b:8b:d2"],
                       ["script", "/etc/xen/scripts/vif-bridge"],
                       ["uuid", "d33a8637-2937-049a-fd80-96251b572e1e"],
                       ["backend", 0]]]


def _domain(vbd):
    return ["domain", ["domid", 15],
            ["uuid", "d9a1b362-c834-67ab-4e9d-d4b706699297"],
            ["vcpus", 1], ["name", "UbuntuPVS810"], _vif(), ["device", vbd]]


def test_pretty_xm_list_layout():
    # The (device (vbd ...)) line fits in 80 columns with its indent, so it
    # stays inline; (device (vif ...)) does not, so it is broken, as is the
    # whole (domain ...).
    value = _domain(["vbd", ["dev", "xvda:disk"], ["uname", "phy:/dev/sdb7"],
                     ["mode", "w"], ["bootable", 1]])
    assert sxp.pretty(value) == textwrap.dedent("""\
        (domain
            (domid 15)
            (uuid d9a1b362-c834-67ab-4e9d-d4b706699297)
            (vcpus 1)
            (name UbuntuPVS810)
            (device
                (vif
                    (bridge eth0)
                    (mac 00:16:3e:1b:8b:d2)
                    (script /etc/xen/scripts/vif-bridge)
                    (uuid d33a8637-2937-049a-fd80-96251b572e1e)
                    (backend 0)
                )
            )
            (device (vbd (dev xvda:disk) (uname phy:/dev/sdb7) (mode w) (bootable 1)))
        )
        """)


def test_pretty_breaks_a_list_wider_than_the_line():
    # With all six vbd fields, the (device (vbd ...)) line would be 112
    # columns, so Xen's printer (and this one) breaks it like the vif.
    value = _domain(["vbd", ["protocol", "x86_64-abi"], ["dev", "xvda:disk"],
                     ["uname", "phy:/dev/sdb7"], ["mode", "w"], ["backend", 0],
                     ["bootable", 1]])
    assert sxp.pretty(value).endswith(textwrap.dedent("""\
            (device
                (vbd
                    (protocol x86_64-abi)
                    (dev xvda:disk)
                    (uname phy:/dev/sdb7)
                    (mode w)
                    (backend 0)
                    (bootable 1)
                )
            )
        )
        """))


def test_pretty_width_counts_the_indent():
    value = ["a", ["b", "c"], "d"]
    assert sxp.pretty(value, width=11) == "(a (b c) d)\n"
    # At column 4, "(b c)" needs 9 columns.
    assert sxp.pretty(value, width=10) == "(a\n    (b c)\n    d\n)\n"
    assert sxp.pretty(value, width=9) == "(a\n    (b c)\n    d\n)\n"
    assert sxp.pretty(value, width=8) == (
        "(a\n    (b\n        c\n    )\n    d\n)\n")


def test_pretty_first_element_stays_on_the_opening_line():
    value = [["x", "y"], "long-atom", "z"]
    assert sxp.pretty(value, width=10) == (
        "((x y)\n    long-atom\n    z\n)\n")
    assert sxp.pretty(["k", "v"], width=3) == "(k\n    v\n)\n"


def test_pretty_non_lists_and_empty():
    assert sxp.pretty("a b") == "'a b'\n"
    assert sxp.pretty(7) == "7\n"
    assert sxp.pretty([]) == "()\n"
    # Even "()" is broken when it does not fit: ")" goes under its "(".
    assert sxp.pretty([[]], width=2) == "((\n )\n)\n"


# --- accessors ------------------------------------------------------------------------

VM = sxp.from_string("""
    (vm (@ (id 3) (flag))
        (name guest)
        (memory 256)
        (cpus 0) (cpus 2)
        (device (vbd (dev hda1)))
        (device (vif (mac aa:bb)))
        (empty)
        loose)
""")


def test_name_and_attributes():
    assert sxp.name(VM) == "vm"
    assert sxp.name("atom") == "atom"
    assert sxp.name([]) is None
    assert sxp.name(None) is None
    assert sxp.attributes(VM) == [["id", "3"], ["flag"]]
    assert sxp.attribute(VM, "id") == "3"
    assert sxp.attribute(VM, "flag", "dflt") == "dflt"
    assert sxp.attribute(VM, "missing") is None
    assert sxp.attributes(["x", "y"]) == []


def test_children_and_child():
    kids = sxp.children(VM)
    assert kids[0] == ["name", "guest"] and kids[-1] == "loose"
    assert sxp.children(VM, "device") == [
        ["device", ["vbd", ["dev", "hda1"]]], ["device", ["vif", ["mac", "aa:bb"]]]]
    assert sxp.children("atom") == []
    assert sxp.child(VM, "memory") == ["memory", "256"]
    assert sxp.child(VM, "nope", "d") == "d"
    assert sxp.child0(VM) == ["name", "guest"]
    assert sxp.child0(["x"], "d") == "d"
    assert sxp.child_at(VM, 99) is None


def test_child_value_and_children_values():
    assert sxp.child_value(VM, "name") == "guest"
    assert sxp.child_value(VM, "cpus") == "0"
    assert sxp.child_value(VM, "empty", "d") == "d"
    assert sxp.child_value(VM, "nope") is None
    assert sxp.child_value(VM, "device") == ["vbd", ["dev", "hda1"]]
    assert sxp.children_values(VM, "cpus") == ["0", "2"]
    assert sxp.children_values(VM, "empty") == []


def test_is_list():
    assert sxp.is_list([]) and sxp.is_list(()) and not sxp.is_list("()")


def test_merge_first_wins():
    s1 = sxp.from_string("(vm (name a) (memory 512) (dev (x 1)) v1)")
    s2 = sxp.from_string("(vm (memory 256) (dev (x 2) (y 3)) (dev (z 4)) (vcpus 2))")
    assert sxp.merge(s1, s2) == sxp.from_string(
        "(vm (name a) (memory 512) (dev (x 1) (y 3)) (dev (z 4)) (vcpus 2) v1)")
    assert sxp.merge(None, s2) is s2
    assert sxp.merge(s1, None) is s1
    assert sxp.merge("a", s2) == "a"


# --- properties ----------------------------------------------------------------------

# Text that exercises every syntax rule: quotes, escapes, comments, ^D...
SYNTAX = st.sampled_from(list("()'\"\\#[]x0178uU4aF \n\t\x04@é"))
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
TEXT = st.text(st.one_of(SYNTAX, ANY_CHAR))

LEAF = st.one_of(
    st.text(ANY_CHAR, max_size=8),
    st.text(SYNTAX, max_size=8),
    st.sampled_from(["", "@", "a", "/dev/sda 1", "C:\\Users"]),
    st.integers(min_value=-10**30, max_value=10**30),
)
TREE = st.recursive(LEAF, lambda kids: st.lists(kids, max_size=5), max_leaves=40)
VALUE = st.lists(TREE, max_size=6)


def normalise(x):
    """What reading back gives: ints come back as decimal strings, and an
    empty string -- written bare, as Xen does -- comes back as nothing."""
    if isinstance(x, list):
        return [normalise(y) for y in x if y != ""]
    return str(x)


@settings(max_examples=500)
@given(VALUE)
def test_to_string_round_trips(x):
    text = sxp.to_string(x)
    assert text.isprintable()
    assert sxp.from_string(text) == normalise(x)


@settings(max_examples=300)
@given(VALUE, st.integers(min_value=0, max_value=100))
def test_pretty_round_trips(x, width):
    text = sxp.pretty(x, width)
    assert text.endswith("\n")
    assert sxp.parse(text)[0] == normalise(x)


@settings(max_examples=2000, deadline=500)
@given(TEXT)
def test_parse_any_text_returns_or_raises_sxp_error(text):
    try:
        result = sxp.parse(text)
    except SxpError as e:
        assert e.line >= 1 and e.column >= 1
        str(e)
    else:
        assert isinstance(result, list)


@settings(max_examples=300, deadline=500)
@given(st.text(SYNTAX, min_size=1000, max_size=5000))
def test_parse_long_text_is_fast(text):
    try:
        sxp.parse(text)
    except SxpError:
        pass
