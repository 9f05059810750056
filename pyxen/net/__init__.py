"""Host-side virtual networking: the Linux plumbing behind Xen's vifs.

Everything here acts on the host's network stack and knows nothing of
xend: MAC allocation (``mac``), links through netlink (``links``: taps,
bridges, VXLAN), bandwidth limits (``shaping``), the network and vif
scripts (``scripts``) and vnet definitions (``vnet``).  xend's
``pyxen.xend.network`` decides when each is used.
"""
