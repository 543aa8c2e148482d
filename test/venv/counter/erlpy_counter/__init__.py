"""A second package of erlpy's test tree: added to a requirement list, it updates the environment."""


def count(items: list[object]) -> int:
    return len(items)
