"""The one error a release step raises when it cannot go on."""

import dagster as dg


class ReleaseStepError(dg.Failure):
    """A release step that cannot go on; the description says what to fix."""
