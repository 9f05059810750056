"""pyxen's benchmarks: ``python -m bench`` (``make bench``) runs them all.

Each benchmark measures pyxen against plain QEMU doing the same work on the
same host, so the number that matters is the overhead the toolstack adds.
See bench/README.md for what is measured and the latest results.
"""
