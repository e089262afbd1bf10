"""Why the replica layer did not answer a request as asked: the exceptions it raises.

``replica.py`` and the role objects (``roles.py``) raise these; the HTTP layer
(``api.py``, ``watch.py``, ``backup.py``) turns each into its answer. A
``NoPrimary`` names its error code (``code``); the codes and their statuses
are listed in ``errors.py``.
"""

from __future__ import annotations


class NoPrimary(Exception):
    """The primary cannot take the write now; the client should retry."""

    code = "no_primary"


class Recovering(NoPrimary):
    """kv-0 is proving it holds every acknowledged write before it serves."""

    code = "recovering"


class NotPrimary(NoPrimary):
    """This kv-0 process cannot show that a majority still follows it: it may have been replaced."""

    code = "not_primary"


class UpgradeInProgress(NoPrimary):
    """A pod of an older build is about: the primary writes no entry kind it could not read."""

    code = "upgrade_in_progress"


class LsnAhead(Exception):
    """``min_lsn`` names a write the primary never made."""


class ReadTimeout(Exception):
    """``min_lsn`` was not reached in time."""


class PrimaryTimeout(Exception):
    """A forwarded write reached the primary but its answer did not come back."""


class NotConfirmed(Exception):
    """The primary could not confirm in time that what it read is held by a majority."""


class WriteConcernTimeout(Exception):
    """The write is durable on the primary but not confirmed by enough replicas."""

    def __init__(self, lsn: int, confirmed: int, required: int) -> None:
        if confirmed < required:
            counted = f"but only {confirmed} of the {required} replicas its write concern needs confirmed it in time"
        else:  # counted once the wait was over, or of the new voters while a change is not settled
            counted = (f"and {confirmed} of the {required} replicas its write concern needs hold it now, but "
                       "they did not confirm it in time (or, while a membership change is not settled, a "
                       "majority of the previous voters did not)")
        super().__init__(
            f"the write (version {lsn}) is durable on the primary, {counted}. It is not rolled back "
            "and will replicate, unless kv-0 loses its volume or is replaced before a follower holds it. "
            "Read it back before retrying")
        self.lsn = lsn
        self.confirmed = confirmed
        self.required = required
