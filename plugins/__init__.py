"""decoderbench's built-in plugins, installed as the package ``decoderbench_plugins``.

Each module is one family and registers itself through the entry-point group ``decoderbench`` in
pyproject.toml, exactly as a third-party plugin does.
"""
