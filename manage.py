#!/usr/bin/env python
"""Django's command-line entry point for KAHN Scope."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A missing or wrong setting is an operator's mistake: one sentence, not a traceback.
        sys.exit(f"kahn: {exc}")


if __name__ == "__main__":
    main()
