"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from pyxen.testing import etcd as etcdtest


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """A one-member etcd with TLS on 127.0.0.1, for the store and cluster
    tests of one module; removed afterwards."""
    why = etcdtest.available()
    if why:     # the Makefile installs it; a missing etcd is a broken machine, not a skip
        pytest.fail(why)
    c = etcdtest.EtcdCluster(tmp_path_factory.mktemp("etcd"), 1)
    c.start()
    yield c
    c.remove()
