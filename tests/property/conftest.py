"""Hypothesis profiles of the property suite: `fast` (default, CI) and `deep`.

Select with NATRELAY_HYPOTHESIS_PROFILE=deep. The example database lives under
natrelay's cache directory ($XDG_CACHE_HOME/natrelay/hypothesis), never in the
repository; the profiles themselves are defined once, in natrelay.tools.fuzz.runner.
"""

from __future__ import annotations

from natrelay.tools.fuzz.runner import register_profiles

PROFILE = register_profiles()
