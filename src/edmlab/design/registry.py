"""One registry style for the design table's rows: a dict name → callable/class, looked up by ``choose``."""


def choose(kind: str, name, registry: dict):
    """``registry[name]``, or a one-line ValueError naming the value and listing the choices."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}: choose one of {sorted(registry)}")
    return registry[name]
