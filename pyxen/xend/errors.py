"""Errors xend reports to its clients; each maps to one HTTP status."""


class XendError(Exception):
    status = 500
    code = "error"


class InvalidRequest(XendError):
    status = 400
    code = "invalid"


class NoSuchDomain(XendError):
    status = 404
    code = "no_such_domain"

    def __init__(self, ref):
        super().__init__(f"Domain '{ref}' does not exist.")
        self.ref = ref


class Unavailable(XendError):
    """The cluster store did not answer (etcd down or out of reach): the
    request may succeed later; nothing was decided (a refusal is Conflict)."""
    code = "unavailable"


class Conflict(XendError):
    status = 409
    code = "conflict"


class NoSuchSnapshot(XendError):
    status = 404
    code = "no_such_snapshot"
