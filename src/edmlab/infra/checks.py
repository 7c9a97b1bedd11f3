"""Type tests of config values: YAML and Python both let ``True`` pass for an integer, which no count should."""


def is_int(value) -> bool:
    """An integer and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
