"""The one clock of ptmpack: UTC to the second, or ``SOURCE_DATE_EPOCH`` when set.

Every timestamp written into a package (``managementinfo.created`` from ``init``,
the manifest's ``created`` from ``pack``) comes from here, so builds are reproducible
(https://reproducible-builds.org/specs/source-date-epoch/).
"""

from __future__ import annotations

import datetime as dt
import os

from ptmpack.errors import UsageError


def now_rfc3339() -> str:
    """RFC 3339 UTC timestamp (``2024-05-01T12:00:00Z``); honours ``SOURCE_DATE_EPOCH``.

    Raises:
        UsageError: ``SOURCE_DATE_EPOCH`` is set but is not a non-negative integer.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        if not epoch.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
        moment = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)
    else:
        moment = dt.datetime.now(dt.timezone.utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
