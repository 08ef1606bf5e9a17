"""Where ferry reaches into a library's internals, one module per library.

Each reach was measured and is worth it (docs/architecture.md gives the
figures), but a library may change its internals in any release. So every such
use lives here, and tests/adapters holds a canary per module that fails loudly
when the library no longer looks the way this code expects; pyproject.toml caps
each library at the releases those canaries have passed on.
"""
