"""pyxen: the Xen 3 toolstack (xend, xm, xm config files, SXP) on QEMU."""

__version__ = "0.1.0"
