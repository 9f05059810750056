"""xend's web console: static files served under /ui/ (see pyxen.xend.web)."""
