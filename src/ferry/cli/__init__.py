"""The `ferry` command: flags become settings, then the library does the work.

One module per group of commands; importing them registers them on `app`.
"""

from ferry.cli import dashboard, dead, deploy, observe, run, send, verify
from ferry.cli.common import app

__all__ = ["app", "dashboard", "dead", "deploy", "observe", "run", "send", "verify"]
